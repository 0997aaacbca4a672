"""CAME (pixart_jax.optim.came) against the `came-pytorch` package, PixArt-Σ's optimizer, on the same gradients."""
import numpy as np
import optax
import pytest

from pixart_jax.optim import came

torch = pytest.importorskip("torch")
came_pytorch = pytest.importorskip("came_pytorch.CAME")

# 1-D and 0-D parameters keep an unfactored g² average; 2-D and 4-D ones are factored (row/column averages).
SHAPES = {"bias": (7,), "scale": (), "kernel": (5, 6), "conv": (2, 3, 4, 5)}
SETTINGS = dict(betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16), clip_threshold=1.0)


def run_both(steps, lr, weight_decay, seed=0):
    """(initial, ours, theirs): parameters after `steps` updates by the same random gradients."""
    rng = np.random.default_rng(seed)
    initial = {k: np.asarray(rng.standard_normal(s), np.float32) for k, s in SHAPES.items()}
    grads = [{k: np.asarray(rng.standard_normal(s) * 10 ** rng.uniform(-3, 1), np.float32) for k, s in SHAPES.items()}
             for _ in range(steps)]
    tx = came(lr, weight_decay=weight_decay, **SETTINGS)
    params, state = dict(initial), tx.init(initial)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in initial.items()}
    reference = came_pytorch.CAME(list(tensors.values()), lr=lr, weight_decay=weight_decay, **SETTINGS)
    for g in grads:
        for k, p in tensors.items():
            p.grad = torch.from_numpy(g[k].copy())
        reference.step()
    return initial, {k: np.asarray(v) for k, v in params.items()}, {k: p.detach().numpy() for k, p in tensors.items()}


@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_came_matches_came_pytorch(weight_decay):
    initial, ours, theirs = run_both(steps=12, lr=1e-2, weight_decay=weight_decay)
    for k in SHAPES:
        change = np.max(np.abs(theirs[k] - initial[k]))
        assert change > 1e-3, k  # the parameters moved
        assert np.max(np.abs(ours[k] - theirs[k])) <= 1e-3 * change, k


def test_came_keeps_factored_moments():
    """A (m, n) weight keeps m + n second-moment numbers (and m + n instability ones), not m·n."""
    state = came(1e-3).init({"kernel": np.zeros((64, 32), np.float32), "bias": np.zeros((32,), np.float32)})
    assert state.row["kernel"].shape == (64, 1) and state.col["kernel"].shape == (1, 32)
    assert state.res_row["kernel"].shape == (64, 1) and state.sq["kernel"].shape == (1, 1)
    assert state.sq["bias"].shape == (32,) and state.row["bias"].shape == (1,)


def test_came_refuses_bad_settings():
    with pytest.raises(ValueError, match="betas"):
        came(1e-3, betas=(0.9, 0.999))
    with pytest.raises(ValueError, match="weight_decay needs the params"):
        tx = came(1e-3, weight_decay=0.1)
        tx.update({"b": np.ones(3, np.float32)}, tx.init({"b": np.ones(3, np.float32)}))
