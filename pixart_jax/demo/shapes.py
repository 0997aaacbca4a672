"""Procedural captioned dataset: one coloured shape per 48×48 image, captioned "a small red circle at the top left".

Every image is a plain dark-grey background with one hard-edged shape of a kind, colour, size and position (a cell
of a 3×3 grid). Images are float32 (H, W, 3) in [0, 1] and a deterministic function of their attributes and jitter;
datasets and their captions are a deterministic function of the seed.
"""
import re
from itertools import product
from typing import NamedTuple

import numpy as np

IMAGE_SIZE = 48
BACKGROUND = (0.2, 0.2, 0.2)
KINDS = ("circle", "square", "triangle")
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
# Half-extents (radius / half-side / half-base) in pixels: a big shape at a corner still fits with its jitter.
SIZES = {"small": 4.0, "big": 7.0}
# Row-major 3×3 grid; the shape is centred at CENTRES[column], CENTRES[row] (pixel edges at integers).
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CENTRES = (8.0, 24.0, 40.0)
JITTER = 1.0  # uniform in [-JITTER, JITTER] pixels on each axis
# Phrasings of each position; captions pick one, parse_caption reads them all.
POSITION_PHRASES = {
    "top left": ("at the top left", "in the top left corner"),
    "top": ("at the top", "near the top"),
    "top right": ("at the top right", "in the top right corner"),
    "left": ("on the left", "on the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("at the bottom right", "in the bottom right corner"),
}
EVALUATION_SEED = 1000  # the evaluation prompts use seeds EVALUATION_SEED, EVALUATION_SEED + 1, ...


class Attributes(NamedTuple):
    """What a caption says about its image."""
    kind: str
    colour: str
    size: str
    position: str


class EvaluationPrompt(NamedTuple):
    """One fixed evaluation prompt: its caption, the attributes it asks for and the seed to sample it with."""
    caption: str
    attributes: Attributes
    seed: int


def attribute_space():
    """All 216 attribute combinations (kind × colour × size × position), in a fixed order."""
    return [Attributes(*a) for a in product(KINDS, COLOURS, SIZES, POSITIONS)]


def caption(attributes, phrasing=0):
    """The caption of `attributes`, with position phrasing `phrasing` (0 or 1)."""
    a = attributes
    return f"a {a.size} {a.colour} {a.kind} {POSITION_PHRASES[a.position][phrasing]}"


_PHRASE_TO_POSITION = {phrase: position for position, phrases in POSITION_PHRASES.items() for phrase in phrases}
_CAPTION = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(KINDS)}) (.+)")


def parse_caption(text):
    """The attributes a caption (any phrasing) describes; ValueError if it is not one of ours."""
    match = _CAPTION.fullmatch(text.strip().lower())
    if match is None or match[4] not in _PHRASE_TO_POSITION:
        raise ValueError(f"not a shapes caption: {text!r}")
    size, colour, kind, phrase = match.groups()
    return Attributes(kind, colour, size, _PHRASE_TO_POSITION[phrase])


def _inside(kind, x, y, cx, cy, r):
    """Which pixel centres (x, y) fall inside the shape centred at (cx, cy) with half-extent r."""
    if kind == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    # Upright isosceles triangle in the same 2r × 2r box: apex at the top, widening linearly to the base.
    return (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - cy + r) / 2)


def render(attributes, jitter=(0.0, 0.0), colours=COLOURS):
    """The (IMAGE_SIZE, IMAGE_SIZE, 3) float32 image in [0, 1] of `attributes`, shifted by `jitter` = (dx, dy) px;
    `colours` maps colour names to RGB."""
    row, column = divmod(POSITIONS.index(attributes.position), 3)
    cx, cy = CENTRES[column] + jitter[0], CENTRES[row] + jitter[1]
    y, x = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE] + 0.5
    inside = _inside(attributes.kind, x, y, cx, cy, SIZES[attributes.size])
    image = np.where(inside[..., None], colours[attributes.colour], BACKGROUND)
    return image.astype(np.float32)


def make_dataset(n, seed, paraphrase=True):
    """`n` images (n, 32, 32, 3) float32 in [0, 1], their captions and their Attributes, all from `seed`.

    Attributes are balanced: the 216 combinations are drawn without replacement, cycling when n > 216. Each image
    gets its own jitter; with `paraphrase` each caption picks one of the two phrasings of its position at random.
    """
    rng = np.random.default_rng(seed)
    space = attribute_space()
    order = np.concatenate([rng.permutation(len(space)) for _ in range(n // len(space) + 1)])[:n]
    attributes = [space[i] for i in order]
    jitters = rng.uniform(-JITTER, JITTER, (n, 2))
    phrasings = rng.integers(0, 2, n) if paraphrase else np.zeros(n, int)
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    for i, (a, j) in enumerate(zip(attributes, jitters)):
        images[i] = render(a, j)
    captions = [caption(a, int(p)) for a, p in zip(attributes, phrasings)]
    return images, captions, attributes


def evaluation_set():
    """The 36 fixed evaluation prompts (canonical phrasing), each with its own seed.

    Every (colour, position) pair occurs once; each position gets all three kinds and both sizes, so every kind
    occurs 12 times, every size 18 times, every colour 9 times and every position 4 times.
    """
    prompts = []
    for c, colour in enumerate(COLOURS):
        for p, position in enumerate(POSITIONS):
            attributes = Attributes(KINDS[(p + c) % 3], colour, tuple(SIZES)[(p + c) % 2], position)
            prompts.append(EvaluationPrompt(caption(attributes), attributes, EVALUATION_SEED + len(prompts)))
    return prompts


def to_model_input(images):
    """(B, H, W, 3) in [0, 1] -> (B, 3, H, W) float32 in [-1, 1], the pixel-space model's input."""
    return (np.asarray(images, np.float32).transpose(0, 3, 1, 2) * 2 - 1).astype(np.float32)


def from_model_output(samples):
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float32 in [0, 1], clipped: what the checker scores."""
    return np.clip((np.asarray(samples, np.float32).transpose(0, 2, 3, 1) + 1) / 2, 0, 1).astype(np.float32)
