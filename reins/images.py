"""Input images for image-to-video: decoded defensively, oriented, converted to RGB and fitted to the video size."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # about 7,300 x 5,500: larger than any phone camera's full resolution in 2026


class ImageError(ValueError):
    """An uploaded image cannot be used: too large, not an image, or in a format Pillow cannot decode."""


class ImageTooLarge(ImageError):
    """An uploaded image exceeds the byte or pixel limit."""


def load_image(data: bytes, width: int, height: int, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` and return an RGB image of exactly width x height (centre crop to the aspect, then resize).

    EXIF orientation is applied (phones store portrait photos as rotated landscape pixels), transparency is composited
    on white, palette, greyscale, CMYK and 16-bit images become 8-bit RGB, and only the first frame of an animation is
    used. The pixel count is checked from the header before any pixel is decoded.
    """
    if len(data) == 0:
        raise ImageError("the image is empty")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageTooLarge(f"the image is {image.width}x{image.height} ({pixels} pixels); the limit is "
                                 f"{max_pixels} pixels")
            image.seek(0)
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"the file is not an image Pillow can decode ({type(error).__name__})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"the image is damaged or truncated: {error}") from None

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = background
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    image = image.convert("RGB")
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
