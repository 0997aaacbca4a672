"""Procedural text-image alignment checker: does a generated image show the shape its caption asks for?

`detect` reads one shape off an image. Foreground = pixels whose colour differs from the (median) background by
enough chroma; each takes the nearest of the four hues; the largest 8-connected single-hue component is the shape
and its hue the colour. The half-maximum mask of that colour gives the bounding box: its centre → 3×3 cell, its
extent → size. The kind comes from moments of the shape's intensity: a triangle is skewed (≈0.57, circles and
squares ≈0) and a square spreads its mass along the axes less than along the diagonals (4th-moment ratio ≈0.75,
circle ≈1). Moments of an intensity that is linear in the image are unbiased under zero-mean noise and keep their
centroid and skew under a symmetric blur, where bounding-box fill ratios of 8-pixel shapes do not survive a blur.
`score` compares the reading with a caption's attributes; an image with no plausible shape is aligned with nothing.
"""
import math

import numpy as np

from pixart_jax.demo.shapes import CENTRES, COLOURS, IMAGE_SIZE, POSITIONS, SIZES, Attributes, parse_caption

MIN_CHROMA = 0.3  # chroma a pixel needs to count as foreground (a pure hue on grey has 1, noise σ=0.05 ~0.06)
MIN_SHARE = 0.5  # the shape must hold at least half of all foreground pixels (rejects noise and scattered blobs)
MIN_PIXELS = 6
MIN_SPREAD = 0.5  # pixels of standard deviation along each axis: thinner is a line, not a shape
MAX_EXTENT = 20.0  # pixels at IMAGE_SIZE: a big shape spans ~14
TRIANGLE_SKEW = 0.25  # triangles measure 0.3-0.65 clean, blurred or noisy; circles and squares below 0.15
SQUARE_AXIS_RATIO = 0.88  # squares measure 0.73-0.85, circles 0.91-1.1
_POSITION_BOUNDARIES = [(a + b) / 2 for a, b in zip(CENTRES, CENTRES[1:])]
_SIZE_BOUNDARY = SIZES["small"] + SIZES["big"]  # midway between the two full extents 2r


def _chroma_plane(rgb):
    """(..., 3) colours -> their two chroma coordinates (x, y), scaled so that a pure hue has length 1.

    Grey offsets cancel, so a colour and its difference from a grey background have the same coordinates."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    return (2 * r - g - b) / 2, math.sqrt(3) * (g - b) / 2


def _hues(colours):
    """The hue (radians) of each colour of `colours` ({name: RGB})."""
    return np.arctan2(*_chroma_plane(np.array(list(colours.values())))[::-1])


def _nearest_colour(hue, hues):
    """Index into `hues` of the hue nearest to each of `hue` (radians, on the circle)."""
    distance = np.abs(hue[..., None] - hues) % (2 * math.pi)
    return np.argmin(np.minimum(distance, 2 * math.pi - distance), axis=-1)


def _largest_component(mask):
    """The largest 8-connected component of a 2-D boolean mask (all False when the mask is empty)."""
    cells = mask.tolist()  # Python lists: the flood fill indexes single pixels, which is slow on arrays
    height, width = mask.shape
    seen = [[False] * width for _ in range(height)]
    best = []
    for start in zip(*np.nonzero(mask)):
        if seen[start[0]][start[1]]:
            continue
        seen[start[0]][start[1]] = True
        stack, pixels = [start], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny in range(max(y - 1, 0), min(y + 2, height)):
                for nx in range(max(x - 1, 0), min(x + 2, width)):
                    if cells[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
        if len(pixels) > len(best):
            best = pixels
    component = np.zeros(mask.shape, bool)
    if best:
        component[tuple(np.array(best).T)] = True
    return component


def _dilate(mask):
    """The mask grown by one pixel in all 8 directions."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.any([padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)], axis=0)


def _kind(weights):
    """The kind of the shape whose intensity is `weights` (2-D, ≥ 0), from its central moments; None if too thin."""
    y, x = np.mgrid[:weights.shape[0], :weights.shape[1]]
    mass = weights.sum()
    dx, dy = x - (weights * x).sum() / mass, y - (weights * y).sum() / mass

    def moment(p, q):
        return (weights * dx ** p * dy ** q).sum() / mass

    spread_x, spread_y = math.sqrt(moment(2, 0)), math.sqrt(moment(0, 2))
    if min(spread_x, spread_y) < MIN_SPREAD:
        return None
    if math.hypot(moment(3, 0) / spread_x ** 3, moment(0, 3) / spread_y ** 3) > TRIANGLE_SKEW:
        return "triangle"
    # 4th moments along the axes over those along the diagonals: 3/4 for an axis-aligned square, 1 for a disc.
    axes = moment(4, 0) + moment(0, 4)
    return "square" if 2 * axes / (axes + 6 * moment(2, 2)) < SQUARE_AXIS_RATIO else "circle"


def _measure(image, colours=COLOURS):
    """(colour index into `colours`, kind, half-maximum mask) of the one shape in `image`, or None when there is
    none."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 3 or not np.isfinite(image).all():
        return None
    x, y = _chroma_plane(image - np.median(image.reshape(-1, 3), axis=0))
    foreground = np.hypot(x, y) > MIN_CHROMA
    hues = _hues(colours)
    labels = _nearest_colour(np.arctan2(y, x), hues)
    components = [_largest_component(foreground & (labels == c)) for c in range(len(colours))]
    colour = int(np.argmax([c.sum() for c in components]))
    component = components[colour]
    if component.sum() < max(MIN_PIXELS, MIN_SHARE * foreground.sum()):
        return None
    # Intensity along the shape's hue relative to its peak: linear in the image (see the module docstring).
    along = x * math.cos(hues[colour]) + y * math.sin(hues[colour])
    along /= np.percentile(along[component], 90)
    kind = _kind(np.where(_dilate(component), np.clip(along, 0, 1), 0))
    # Half-maximum mask: a blur moves this edge far less than the fixed foreground threshold's.
    shape = _largest_component((along > 0.5) & (labels == colour))
    if kind is None or shape.sum() < MIN_PIXELS:
        return None
    return colour, kind, shape


def shape_mask(image):
    """The (H, W) boolean mask of the one shape `detect` reads off `image` (its half-maximum pixels), or None."""
    measured = _measure(image)
    return None if measured is None else measured[2]


def detect(image, colours=COLOURS):
    """The Attributes of the one shape in `image` (H, W, 3) in [0, 1], or None when no plausible shape is there;
    its colour is the nearest in hue of `colours` ({name: RGB}: the dataset's, or more)."""
    measured = _measure(image, colours)
    if measured is None:
        return None
    colour, kind, shape = measured
    rows, columns = np.nonzero(shape)
    scale_y, scale_x = IMAGE_SIZE / shape.shape[0], IMAGE_SIZE / shape.shape[1]
    height, width = (rows.max() - rows.min() + 1) * scale_y, (columns.max() - columns.min() + 1) * scale_x
    if max(height, width) > MAX_EXTENT:
        return None
    centre_y = (rows.min() + rows.max() + 1) / 2 * scale_y
    centre_x = (columns.min() + columns.max() + 1) / 2 * scale_x
    cell = 3 * np.searchsorted(_POSITION_BOUNDARIES, centre_y) + np.searchsorted(_POSITION_BOUNDARIES, centre_x)
    return Attributes(kind=kind, colour=list(colours)[colour],
                      size="small" if math.sqrt(height * width) < _SIZE_BOUNDARY else "big",
                      position=POSITIONS[cell])


def score(image, attributes, colours=COLOURS):
    """Per-attribute correctness of `image` against `attributes` (Attributes or a caption), as a dict; colours as
    `detect` reads them.

    Keys: kind, colour, size, position (bools), aligned (all four right) and detected (what `detect` read, or
    None — then nothing is correct).
    """
    if isinstance(attributes, str):
        attributes = parse_caption(attributes)
    detected = detect(image, colours)
    result = {name: detected is not None and getattr(detected, name) == getattr(attributes, name)
              for name in Attributes._fields}
    result["aligned"] = all(result.values())
    result["detected"] = detected
    return result


def attribute_percentages(images, attributes_list, colours=COLOURS):
    """Percent of `images` right on each attribute and fully aligned: {kind, colour, size, position, aligned};
    colours as `detect` reads them."""
    if len(images) != len(attributes_list) or not len(images):
        raise ValueError(f"need as many attributes as images (and at least one): {len(images)} images, "
                         f"{len(attributes_list)} attributes")
    scores = [score(image, attributes, colours) for image, attributes in zip(images, attributes_list)]
    return {name: 100.0 * float(np.mean([s[name] for s in scores])) for name in (*Attributes._fields, "aligned")}


def alignment_percent(images, attributes_list):
    """Percent of `images` fully aligned with their attributes (or captions)."""
    return attribute_percentages(images, attributes_list)["aligned"]
