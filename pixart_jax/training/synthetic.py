"""Generated training examples for the tiny config and the tests: coloured-shape latents with random captions.

Each example has the keys the feature pipeline yields (data.py): `caption` (L, C) float32, `mask` (L,) int32,
`mean` / `std` (4, h, w) float32 (an unscaled VAE posterior), `img_hw` (2,) float32, `aspect_ratio` (1,) float32,
`bucket` (the aspect-ratio key), and optionally ControlNet control latents `control_mean` / `control_std`.
Everything is a deterministic function of the seed.
"""
import numpy as np

# Small buckets for tiny models (pixels; latents are 1/8, divisible by the patch size 2).
TINY_BUCKETS = {"0.5": (96, 192), "1.0": (128, 128), "2.0": (192, 96)}


def shape_latent(rng, height, width, channels=4):
    """(latent, mask): an (channels, height, width) latent, a flat background with one rectangle or ellipse of
    another colour, and the shape's (height, width) boolean mask."""
    background = rng.uniform(-2, 2, (channels, 1, 1))
    colour = rng.uniform(-3, 3, (channels, 1, 1))
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    ry, rx = rng.uniform(0.15, 0.35) * height, rng.uniform(0.15, 0.35) * width
    y, x = np.mgrid[:height, :width]
    if rng.random() < 0.5:
        inside = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
    else:
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    return np.where(inside[None], colour, background).astype(np.float32), inside


def outline(mask):
    """The pixels of a boolean mask with a 4-neighbour outside it (or on the border): the shape's edge."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def synthetic_examples(count, *, seed, caption_channels, max_tokens=120, buckets=("1.0",), table=TINY_BUCKETS,
                       std=0.1, control=False):
    """`count` example dicts, bucket keys taken round-robin from `buckets` (keys of `table`, pixel sizes). With
    `control`, each also has ControlNet control latents: +1 on the shape's outline, -1 elsewhere, in every
    channel (an edge map's latent stand-in); the other fields are the same as without."""
    unknown = [b for b in buckets if b not in table]
    if unknown:
        raise ValueError(f"synthetic buckets {unknown} are not in the table {sorted(table)}")
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        key = buckets[i % len(buckets)]
        height, width = table[key]
        tokens = int(rng.integers(4, max_tokens + 1))
        caption = np.zeros((max_tokens, caption_channels), np.float32)
        caption[:tokens] = rng.standard_normal((tokens, caption_channels))
        mean, inside = shape_latent(rng, height // 8, width // 8)
        examples.append({
            "caption": caption,
            "mask": (np.arange(max_tokens) < tokens).astype(np.int32),
            "mean": mean,
            "std": np.full_like(mean, std),
            "img_hw": np.array([height, width], np.float32),
            "aspect_ratio": np.array([float(key)], np.float32),
            "bucket": key,
        })
        if control:
            edges = np.where(outline(inside), 1.0, -1.0).astype(np.float32)
            examples[-1].update(control_mean=np.broadcast_to(edges, mean.shape).copy(),
                                control_std=np.full_like(mean, std))
    return examples
