"""Image processing of the pipelines: bilinear resizing (PyTorch's `interpolate(mode="bilinear",
align_corners=False)` and OpenCV's INTER_LINEAR when enlarging), the resize-back of resolution binning and output
conversion."""

import jax.numpy as jnp
import numpy as np
from PIL import Image

from pixart_jax.files import atomic_file


def _bilinear_matrix(n_in, n_out):
    """(n_out, n_in) weights of half-pixel bilinear resampling without antialiasing (PyTorch's
    `interpolate(mode="bilinear", align_corners=False)`): source x = (i + 0.5) * n_in / n_out - 0.5, clamped at 0."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def cover_and_crop(h, w, height, width):
    """((rh, rw), (top, left)): the size an h x w image is resized to so that it covers height x width keeping its
    aspect (diffusers' rounding), and the corner of the centred crop."""
    ratio = max(height / h, width / w)
    rh, rw = int(h * ratio), int(w * ratio)
    return (rh, rw), ((rh - height) // 2, (rw - width) // 2)


def resize_bilinear(images, height, width):
    """(B, C, H, W) -> (B, C, height, width), half-pixel bilinear without antialiasing (module docstring)."""
    mh = jnp.asarray(_bilinear_matrix(images.shape[2], height), jnp.float32)
    mw = jnp.asarray(_bilinear_matrix(images.shape[3], width), jnp.float32)
    return jnp.einsum("yh,bchw,xw->bcyx", mh, images, mw, precision="highest")


def resize_and_crop(images, height, width):
    """(B, C, H, W) -> (B, C, height, width): scale to cover the target, keeping the aspect, then centre-crop."""
    h, w = images.shape[2:]
    if (h, w) == (height, width):
        return images
    (rh, rw), (top, left) = cover_and_crop(h, w, height, width)
    resized = resize_bilinear(images, rh, rw)
    return resized[:, :, top:top + height, left:left + width]


def to_numpy(images):
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) float32 in [0, 1] (diffusers' output_type="np")."""
    return np.asarray(jnp.clip(images / 2 + 0.5, 0, 1)).transpose(0, 2, 3, 1).astype(np.float32)


def to_pil(images):
    """(B, C, H, W) in [-1, 1] -> list of PIL images (diffusers' output_type="pil")."""
    return pil_images(to_numpy(images))


def pil_images(images):
    """(B, H, W, 3) in [0, 1] (output_type="np") -> list of PIL images, rounded as diffusers does."""
    return [Image.fromarray(a) for a in (np.asarray(images) * 255).round().astype(np.uint8)]


def grid(images, columns=None):
    """One PIL image tiling `images` (PIL, same size) in rows of `columns` (default: near-square)."""
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * w, (i // columns) * h))
    return sheet


def write_png(image, path):
    """Saves a PIL image as PNG at `path` (creating its folder, replacing a file there) through `atomic_file`, so
    `path` is never a partial image."""
    with atomic_file(path, overwrite=True) as tmp:
        image.save(tmp, format="PNG")
