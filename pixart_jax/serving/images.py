"""Images in and out of the API: PNGs as base64 strings, and control images uploaded as base64 PNG/JPEG (decoded in
memory: the server never opens a path a request names)."""
import base64
import binascii
import io

from PIL import Image

from pixart_jax.serving.errors import APIError

UPLOAD_FORMATS = ("PNG", "JPEG")
DATA_URL = "data:image/"


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_upload(text: str, max_bytes: int, max_pixels: int, field: str = "control_image") -> Image.Image:
    """The RGB image of a base64 PNG or JPEG (optionally a data: URL); a 400 APIError naming `field` for anything
    else, more than `max_bytes` decoded or more than `max_pixels` pixels (checked before the pixels are decoded)."""
    if text.startswith(DATA_URL):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise APIError(400, f"{field}: a data URL must be base64 (data:image/...;base64,...)", field)
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise APIError(400, f"{field} is larger than the server's max_upload_bytes ({max_bytes})", field)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{field} is not valid base64", field) from None
    if len(data) > max_bytes:
        raise APIError(400, f"{field} is {len(data)} bytes, more than max_upload_bytes ({max_bytes})", field)
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, Image.DecompressionBombError):
        raise APIError(400, f"{field} is not a readable image (PNG or JPEG)", field) from None
    if image.format not in UPLOAD_FORMATS:
        raise APIError(400, f"{field} must be PNG or JPEG, got {image.format}", field)
    if image.width * image.height > max_pixels:
        raise APIError(400, f"{field} is {image.width}x{image.height}, more than {max_pixels} pixels", field)
    try:
        return image.convert("RGB")
    except (OSError, ValueError):
        raise APIError(400, f"{field} could not be decoded (a truncated or corrupt {image.format})", field) from None
