"""Control images for the ControlNet-Transformer (spec §5.3, §5.5): an image -> its edge map -> scaled latents.

    image -> resized to cover the bucket size and centre-cropped -> edge map in [0, 1] (Canny, HED or the image
    itself) -> [-1, 1], 3 channels -> VAE posterior sample × scaling factor (0.18215 for the SD VAE)

Canny is OpenCV's (thresholds 100 / 200, the ControlNet annotator's defaults) and needs no weights; HED is the
network the released PixArt-δ ControlNets were trained with (pixart_jax/hed.py, weights `ControlNetHED.pth`).
"""
import enum
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pixart_jax.vae import AutoencoderKL

CANNY_THRESHOLDS = (100, 200)


class ControlKind(enum.StrEnum):
    """How a control image becomes the edge map the ControlNet sees."""
    canny = "canny"   # OpenCV Canny edges: no weights needed
    hed = "hed"       # the HED network (the released models' edges): needs ControlNetHED.pth
    none = "none"     # the image already is an edge map


def read_image(image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a path, a PIL image or an (H, W[, 3]) array (uint8, or float in [0, 1]); a
    ValueError names a file that is missing or not an image."""
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"control image {os.fspath(image)} does not exist")
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read control image {os.fspath(image)}: {e}") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"a control image array must be (H, W) or (H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return array


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: `image` resized (bicubic) to cover the size, keeping its aspect, centre-cropped."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(ImageOps.fit(Image.fromarray(image), (width, height), Image.BICUBIC))


def canny(image: np.ndarray, thresholds=CANNY_THRESHOLDS) -> np.ndarray:
    """(H, W) float32 in {0, 1}: OpenCV's Canny edges of an (H, W, 3) uint8 RGB image."""
    import cv2  # only the Canny path needs OpenCV

    return (cv2.Canny(image, *thresholds) > 0).astype(np.float32)


def edge_maps(images: np.ndarray, kind: ControlKind, hed=None):
    """(B, H, W, 3) uint8 -> (B, C, H, W) float32 edge maps in [0, 1]: one channel (Canny, HED) or the image's
    three (`none`). `hed`: a pixart_jax.hed.HED, needed for kind "hed"."""
    kind = ControlKind(kind)
    if kind == ControlKind.canny:
        return jnp.asarray(np.stack([canny(image) for image in images])[:, None])
    pixels = jnp.asarray(images.transpose(0, 3, 1, 2), jnp.float32) / 255.0
    if kind == ControlKind.none:
        return pixels
    if hed is None:
        raise ValueError("control 'hed' needs the HED network (pixart_jax.hed.load_hed of ControlNetHED.pth)")
    return hed(pixels)


def control_pixels(edges):
    """(B, C, H, W) edge maps in [0, 1] -> (B, 3, H, W) in [-1, 1], the VAE's input (one channel replicated)."""
    edges = 2.0 * jnp.asarray(edges, jnp.float32) - 1.0
    return jnp.broadcast_to(edges, (edges.shape[0], 3, *edges.shape[2:]))


def control_latents(vae, pixels, key):
    """Scaled latents of control pixels: a posterior sample of the VAE (`encode` -> (mean, std)), × its scaling
    factor, as the reference app does."""
    return vae.scaling_factor * AutoencoderKL.sample(*vae.encode(pixels), key)
