"""Where the PyTorch path's seeded noise comes from (`NoiseSource`): the JAX pipeline's draws (the default: one seed,
one image on both backends) or a torch.Generator("cpu") seeded with it, as diffusers' pipelines draw."""
import inspect

import jax
import numpy as np
import torch

from pixart_jax.choices import NoiseSource, choose
from pixart_jax.pipelines.noise import call_keys, initial_latents
from pixart_jax.samplers.base import step_keys, step_noise
from pixart_jax.torch.scheduler_noise import step_with_noise


def jax_on_cpu():
    """A context running JAX on the host CPU: the path's few JAX draws leave the accelerator to PyTorch."""
    return jax.default_device(jax.local_devices(backend="cpu")[0])


def call_noise(source: NoiseSource | str, seed: int, device):
    """The noise of a call with `seed` on `device`: a JaxNoise or a TorchGeneratorNoise."""
    kind = {NoiseSource.jax: JaxNoise, NoiseSource.torch: TorchGeneratorNoise}
    return kind[choose(NoiseSource, source, "noise")](seed, device)


class JaxNoise:
    """The JAX pipeline's draws for `seed` (pixart_jax.pipelines.noise): its initial latents and, at step i of a
    loop of `steps`, the noise its sampler injects there."""

    def __init__(self, seed, device):
        with jax_on_cpu():
            self.keys = call_keys(seed)
        self.device = device
        self._step_keys = None

    def latents(self, shape) -> torch.Tensor:
        with jax_on_cpu():
            return self._tensor(initial_latents(self.keys.latents, shape))

    def step(self, scheduler, model_output, t, sample, *, index, steps, eta):
        """scheduler.step's (prev_sample, ...) at step `index` of `steps`, with this seed's noise of that step."""
        if self._step_keys is None:
            with jax_on_cpu():
                self._step_keys = step_keys(self.keys.sampler, steps)

        def noise():
            with jax_on_cpu():
                return self._tensor(step_noise(self._step_keys[index], tuple(sample.shape)))

        return step_with_noise(scheduler, model_output, t, sample, index=index, eta=eta, noise=noise)

    def _tensor(self, array):
        return torch.from_numpy(np.asarray(array)).to(self.device)


class TorchGeneratorNoise:
    """diffusers' draws: a torch.Generator("cpu") seeded with `seed` draws the initial latents, then each step's
    noise inside the scheduler's step."""

    def __init__(self, seed, device):
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def latents(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float32)

    def step(self, scheduler, model_output, t, sample, *, index, steps, eta):
        # diffusers' pipeline passes its eta to every scheduler whose step takes one (DDIM's η, TCD's γ)
        options = {"eta": eta} if "eta" in inspect.signature(scheduler.step).parameters else {}
        return scheduler.step(model_output, t, sample, **options, generator=self.generator, return_dict=False)

