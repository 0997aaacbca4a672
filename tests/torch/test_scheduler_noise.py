"""step_with_noise: each diffusers scheduler's step with the noise we give it. Given exactly the draws the step
would make from a torch.Generator, a whole loop equals diffusers' own steps with that generator bit for bit."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixart_jax.samplers import make_sampler, to_scheduler_config  # noqa: E402
from pixart_jax.torch.scheduler_noise import step_with_noise  # noqa: E402

SHAPE = (2, 4, 8, 8)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def scheduler(name, **options):
    config = to_scheduler_config(make_sampler(name, **options))
    return getattr(diffusers, config["_class_name"]).from_config(config)


def model_outputs(steps):
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.standard_normal(SHAPE).astype(np.float32)) for _ in range(steps)]


def loop(sched, steps, run_step):
    """The samples of a loop of `steps` from fixed model outputs, each step run by run_step(t, x, out, i)."""
    sched.set_timesteps(steps)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32))
    samples = []
    for i, (t, out) in enumerate(zip(sched.timesteps, model_outputs(steps))):
        x = run_step(t, x, out, i)[0]
        samples.append(x)
    return torch.stack(samples).numpy()


@pytest.mark.parametrize("name, steps, eta, options", [
    ("ddim", 4, 0.6, {}),
    ("lcm", 4, 0.0, {}),
    ("tcd", 4, 0.3, {}),
    ("sa", 5, 0.0, {}),
    ("sa", 4, 0.0, {"prediction_type": "v_prediction"}),
    ("dpm", 3, 0.0, {}),
])
def test_given_the_generators_draws_the_steps_are_diffusers_own(name, steps, eta, options):
    eta_option = {"eta": eta} if name in ("ddim", "tcd") else {}
    theirs_gen, sched_theirs = torch.Generator().manual_seed(5), scheduler(name, **options)
    theirs = loop(sched_theirs, steps, lambda t, x, out, i: sched_theirs.step(
        out, t, x, generator=theirs_gen, return_dict=False, **eta_option))
    ours_gen, calls = torch.Generator().manual_seed(5), []

    def noise():
        calls.append(1)
        return torch.randn(SHAPE, generator=ours_gen)

    sched_ours = scheduler(name, **options)
    ours = loop(sched_ours, steps, lambda t, x, out, i: step_with_noise(sched_ours, out, t, x, index=i, eta=eta,
                                                                         noise=noise))
    np.testing.assert_array_equal(ours, theirs)
    assert len(calls) == {"ddim": steps, "lcm": steps - 1, "tcd": steps - 1, "sa": steps, "dpm": 0}[name]
    assert "stochastic_adams_bashforth_update" not in vars(sched_ours)  # the hook is gone after each step


def test_other_noise_changes_the_samples_and_unknown_schedulers_are_refused():
    sched = scheduler("lcm")
    zeros = loop(sched, 3, lambda t, x, out, i: step_with_noise(sched, out, t, x, index=i, eta=0.0,
                                                                noise=lambda: torch.zeros(SHAPE)))
    ones = loop(sched, 3, lambda t, x, out, i: step_with_noise(sched, out, t, x, index=i, eta=0.0,
                                                               noise=lambda: torch.ones(SHAPE)))
    assert np.abs(zeros[0] - ones[0]).min() > 0.1
    euler = diffusers.EulerAncestralDiscreteScheduler()
    euler.set_timesteps(2)
    with pytest.raises(ValueError, match="EulerAncestralDiscreteScheduler: the JAX noise cannot be injected"):
        step_with_noise(euler, torch.zeros(SHAPE), euler.timesteps[0], torch.zeros(SHAPE), index=0, eta=0.0,
                        noise=lambda: torch.zeros(SHAPE))
