"""Control images for the ControlNet-Transformer (spec §5.3, §5.5): an image -> its edge map -> scaled latents.

    image -> resized to cover the bucket size and centre-cropped -> edge map in [0, 1] (Canny, HED or the image
    itself) -> [-1, 1], 3 channels -> VAE posterior sample × scaling factor (0.18215 for the SD VAE)

Canny is OpenCV's (thresholds 100 / 200, the ControlNet annotator's defaults) and needs no weights; HED is the
network the released PixArt-δ ControlNets were trained with (pixart_jax/models/hed.py, weights `ControlNetHED.pth`).
"""
import dataclasses
import enum
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pixart_jax.choices import choose
from pixart_jax.models.vae import AutoencoderKL

CANNY_THRESHOLDS = (100, 200)


class ControlKind(enum.StrEnum):
    """How a control image becomes the edge map the ControlNet sees."""
    canny = "canny"   # OpenCV Canny edges: no weights needed
    hed = "hed"       # the HED network (the released models' edges): needs ControlNetHED.pth
    none = "none"     # the image already is an edge map


def read_image(image, what="control image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a path, a PIL image or an (H, W[, 3]) array (uint8, or float in [0, 1]); a
    ValueError names (as `what`) a file that is missing or not an image."""
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"{what} {os.fspath(image)} does not exist")
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read {what} {os.fspath(image)}: {e}") from None
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


def edge_maps(images: np.ndarray, kind: ControlKind, hed=None) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, C, H, W) float32 edge maps in [0, 1]: one channel (Canny, HED) or the image's
    three (`none`). `hed`: a pixart_jax.models.hed.HED (or a function of (B, 3, H, W) pixels in [0, 1]), for kind
    "hed"."""
    kind = ControlKind(kind)
    if kind == ControlKind.canny:
        return np.stack([canny(image) for image in images])[:, None]
    pixels = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    if kind == ControlKind.none:
        return pixels
    if hed is None:
        raise ValueError("control 'hed' needs the HED network (pixart_jax.models.hed.load_hed of ControlNetHED.pth)")
    return np.asarray(hed(pixels), np.float32)


def control_pixels(edges) -> np.ndarray:
    """(B, C, H, W) edge maps in [0, 1] -> (B, 3, H, W) float32 in [-1, 1], the VAE's input (one channel
    replicated)."""
    edges = 2.0 * np.asarray(edges, np.float32) - 1.0
    return np.ascontiguousarray(np.broadcast_to(edges, (edges.shape[0], 3, *edges.shape[2:])))


def control_latents(vae, pixels, key):
    """Scaled latents of control pixels: a posterior sample of the VAE (`encode` -> (mean, std)), × its scaling
    factor, as the reference app does."""
    return vae.scaling_factor * AutoencoderKL.sample(*vae.encode(pixels), key)


@dataclasses.dataclass(frozen=True, eq=False)
class ControlRequest:
    """One pipeline call's control (both backends): images (a tuple of (H, W, 3) uint8) with their edge-map kind,
    or ready `latents` (1 or one per prompt, C, h, w), as given."""
    images: tuple | None
    kind: ControlKind
    latents: object = None

    def size(self, height, width, vae_scale):
        """The call's (height, width): as given, or (None) the control image's size rounded down to multiples of
        8, or the latents' size × vae_scale."""
        if self.images is not None:
            default = [side // 8 * 8 or 8 for side in self.images[0].shape[:2]]
        else:
            default = [side * vae_scale for side in self.latents.shape[2:]]
        return tuple(d if given is None else given for given, d in zip((height, width), default))

    def pixels(self, height, width, hed=None) -> np.ndarray:
        """(images, 3, height, width) VAE input in [-1, 1]: each image fitted to the binned size, as its edge map."""
        images = np.stack([fit(image, height, width) for image in self.images])
        return control_pixels(edge_maps(images, self.kind, hed))


def control_request(control_image, control=ControlKind.canny, latents=None) -> ControlRequest | None:
    """The ControlRequest of a call's control arguments (see PixArtControlNetPipeline.__call__; None when neither
    an image nor latents are given): the images read, the kind checked, a ValueError for anything wrong. Their
    count and shapes are checked against the prompts and the model by pixart_jax.pipelines.request."""
    if control_image is None and latents is None:
        return None
    if control_image is not None and latents is not None:
        raise ValueError("pass either control_image or control_latents, not both")
    kind = choose(ControlKind, control, "control")
    if latents is not None:
        return ControlRequest(None, kind, latents if hasattr(latents, "shape") else np.asarray(latents, np.float32))
    images = control_image if isinstance(control_image, (list, tuple)) else [control_image]
    return ControlRequest(tuple(read_image(image) for image in images), kind)


def check_control(request: ControlRequest | None, hed_error: str | None):
    """What a ControlNet pipeline needs of a call's control: one, and (`hed_error`, the message where no HED
    network is there; None: it is) the HED network for control images of kind "hed"."""
    if request is None:
        raise ValueError("pass either control_image or control_latents")
    if request.kind == ControlKind.hed and request.images is not None and hed_error:
        raise ValueError(hed_error)


def check_control_latents(shape, channels, height, width, vae_scale):
    """A ValueError unless control latents of `shape` (.., C, h, w) fit a height x width (binned) image."""
    expected = (channels, height // vae_scale, width // vae_scale)
    if tuple(shape[1:]) != expected:
        raise ValueError(f"control_latents must be (.., {expected[0]}, {expected[1]}, {expected[2]}) for a "
                         f"{height}x{width} image, got {tuple(shape)}")


def control_rows(count, prompts, per_prompt) -> np.ndarray:
    """Which of `count` control latents (1, or one per prompt) each of the prompts · per_prompt images gets."""
    return np.repeat(np.arange(prompts) % count, per_prompt)
