"""Scores of the demo beyond alignment: fidelity to what the caption fully determines, and step consistency.

Fidelity: a caption fixes the whole image up to the dataset's ±1 px jitter (background colour, and the shape's
kind, colour, size and position), so each generated image is compared with the caption's canonical rendering. Every
pixel's membership in the shape is 1 - |pixel - shape colour| / |background - shape colour| (1 on the colour, 0 on
the background or on a colour as far away, a blend in between); the score is the soft IoU Σ_shape m / (|shape| +
Σ_elsewhere m) with the rendering that fits best among jitters of -1 … 1 px in 0.5 px steps on each axis. A
rendering scores 1; a blurred, faint, misplaced, mis-sized or mis-coloured shape, or stray colour, scores less.

Step change: the mean absolute pixel difference (images in [0, 1]) between the images one initial noise gives at
different numbers of steps, averaged over every pair of step counts and every prompt (lower: more consistent).
"""
import functools
import itertools

import numpy as np

from pixart_jax.demo.shapes import BACKGROUND, COLOURS, JITTER, render

JITTER_GRID = np.linspace(-JITTER, JITTER, 5)


def shape_membership(images, colour):
    """(N, H, W) in [0, 1]: how much each pixel of `images` (N, H, W, 3) is the shape colour rather than the
    background."""
    colour, background = np.asarray(colour, np.float32), np.asarray(BACKGROUND, np.float32)
    distance = np.linalg.norm(np.asarray(images, np.float32) - colour, axis=-1)
    return np.clip(1 - distance / np.linalg.norm(background - colour), 0, 1)


@functools.lru_cache(maxsize=None)
def canonical_masks(attributes):
    """(J, H, W) bool: the shape's pixels in the renderings of `attributes` at every jitter of JITTER_GRID² (cached:
    216 attribute combinations at most)."""
    background = np.asarray(BACKGROUND, np.float32)
    masks = np.stack([(render(attributes, jitter) != background).any(axis=-1)
                     for jitter in itertools.product(JITTER_GRID, JITTER_GRID)])
    masks.flags.writeable = False
    return masks


def fidelity(image, attributes):
    """The soft IoU in [0, 1] of `image` (H, W, 3) with the best-fitting rendering of its caption's `attributes`."""
    membership = shape_membership(image[None], COLOURS[attributes.colour])[0]
    masks = canonical_masks(attributes)
    inside = (membership * masks).sum(axis=(1, 2))
    outside = (membership * ~masks).sum(axis=(1, 2))
    return float((inside / (masks.sum(axis=(1, 2)) + outside)).max())


def fidelity_percent(images, attributes_list):
    """Mean fidelity of `images` against their attributes, in percent (0-100, higher is better)."""
    if len(images) != len(attributes_list) or not len(images):
        raise ValueError(f"need as many attributes as images (and at least one): {len(images)} images, "
                         f"{len(attributes_list)} attributes")
    return 100.0 * float(np.mean([fidelity(image, a) for image, a in zip(images, attributes_list)]))


def step_change(images_by_steps):
    """Mean absolute pixel difference over every pair of the (N, H, W, 3) image batches in `images_by_steps` (one
    per step count, same prompts and initial noise), in [0, 1]."""
    batches = [np.asarray(b, np.float32) for b in images_by_steps]
    if len(batches) < 2 or len({b.shape for b in batches}) != 1:
        raise ValueError(f"need at least two image batches of one shape, got shapes {[b.shape for b in batches]}")
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(batches, 2)]))
