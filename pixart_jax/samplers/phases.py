"""The consistency models' timestep grids (consistency.md §1.2, §1.10, §2.2): the N-point distillation grid, the
evenly spaced subsets LCM and TCD sample on, and PCM's phases.

Grid: τ_j = k(j + 1) - 1, j = 0 … N-1, k = T / N (N = 50: 19, 39, …, 999; N = 40: 24, 49, …, 999).
Phases: M contiguous runs of grid indices with lower-edge indices e_m = floor(m N / M) (m = 0 … M-1); every index
of phase m is mapped to the phase's lower edge s_0 = 0 (ᾱ_0), s_m = τ_{e_m - 1}: the grid point just below it.
"""
import numpy as np


def consistency_grid(num_train_timesteps, n):
    """τ_j = k(j + 1) - 1 for j = 0 … n-1, k = T // n, ascending int64; ValueError unless 1 ≤ n ≤ T."""
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"the distillation grid needs 1 to {num_train_timesteps} points, got {n}")
    return np.arange(1, n + 1, dtype=np.int64) * (num_train_timesteps // n) - 1


def evenly_spaced(grid, steps):
    """`steps` timesteps of the ascending `grid`, descending from its top: indices floor(linspace(0, N, steps,
    endpoint=False)) into the reversed grid (diffusers' LCMScheduler and TCDScheduler)."""
    if steps > len(grid):
        raise ValueError(f"sampling takes at most original_inference_steps = {len(grid)} steps, got {steps}")
    return grid[::-1][np.floor(np.linspace(0, len(grid), steps, endpoint=False)).astype(np.int64)]


def _check_phases(n, phases):
    if not 1 <= phases <= n:
        raise ValueError(f"the number of phases must be in [1, {n}] (the grid's points), got {phases}")


def phase_edge_indices(n, phases):
    """e_m = floor(m N / M), m = 0 … M-1: the lowest grid index of each phase."""
    _check_phases(n, phases)
    return np.arange(phases, dtype=np.int64) * n // phases


def phase_edges(num_train_timesteps, n, phases):
    """The phases' lower-edge timesteps s_0 = 0, s_m = τ_{e_m - 1}, ascending."""
    grid = consistency_grid(num_train_timesteps, n)
    edges = phase_edge_indices(n, phases)
    return np.where(edges > 0, grid[np.maximum(edges - 1, 0)], 0)


def phase_of_indices(num_train_timesteps, n, phases):
    """(edge timestep, is-edge) of every grid index j = 0 … N-1: the lower edge s_{m(j)} of j's phase, and whether
    j is its phase's lowest index (then the teacher's step from τ_j lands on the edge itself)."""
    edge_indices = phase_edge_indices(n, phases)
    phase = np.searchsorted(edge_indices, np.arange(n), side="right") - 1
    return phase_edges(num_train_timesteps, n, phases)[phase], np.arange(n) == edge_indices[phase]


def phase_timesteps(num_train_timesteps, n, phases):
    """PCM's deterministic sampling timesteps for M = `phases` steps, descending: the grid's top τ_{N-1}, then the
    edges s_{M-1} … s_1 (each step jumps to the next edge; the last one to s_0 = 0)."""
    grid = consistency_grid(num_train_timesteps, n)
    return np.concatenate([grid[-1:], phase_edges(num_train_timesteps, n, phases)[:0:-1]])
