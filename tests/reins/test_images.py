import io

import numpy as np
import pytest
from PIL import Image

from reins.images import ImageError, load_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"), ("L", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("RGB", "WEBP")],
)
def test_formats_become_rgb_of_requested_size(mode, fmt):
    image = Image.new(mode, (120, 80))
    result = load_image(encode(image, fmt), width=64, height=32)
    assert result.mode == "RGB"
    assert result.size == (64, 32)


def test_exif_rotation_is_applied():
    # A landscape pixel array tagged "rotate 90" is a portrait photo.
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6
    rotated = load_image(encode(image, "JPEG", exif=exif.tobytes()), width=50, height=100, max_pixels=10**6)
    assert rotated.size == (50, 100)
    assert np.asarray(rotated)[..., 0].mean() > 200


def test_transparency_goes_on_white():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert np.asarray(load_image(encode(image, "PNG"), 16, 16)).min() == 255


def test_garbage_is_rejected():
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"definitely not an image", 16, 16)


def test_truncated_file_is_rejected():
    data = encode(Image.new("RGB", (64, 64), (10, 20, 30)), "PNG")
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2], 16, 16)


def test_empty_file_is_rejected():
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", 16, 16)


def test_byte_limit():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="limit is 100 bytes"):
        load_image(encode(noise, "PNG"), 16, 16, max_bytes=100)


def test_pixel_limit_checked_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageError, match="9000000 pixels"):
        load_image(data, 16, 16, max_pixels=1_000_000)
