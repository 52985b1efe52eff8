"""Image decoding and normalisation shared by every dataset.

Images are returned as RGB ``uint8`` arrays ``H x W x 3`` (grey and RGBA inputs are
converted). Truncated JPEG/PNG files are an error, not a half-grey image. When a target
size is given, JPEGs are decoded at 1/2, 1/4 or 1/8 resolution by libjpeg's DCT scaling
whenever that still covers the target, then resized with area interpolation.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from helper.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))

cv2.setNumThreads(1)


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) from the first SOF marker of a JPEG byte string, or None."""
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
        pos += 2 + length
    return None


def _check_complete(data: bytes, path: str) -> None:
    """Raise a UserError when a JPEG/PNG byte string is empty, unknown or truncated."""
    if not data:
        raise UserError(f"image file is empty: {path}; re-extract or re-download it")
    if data.startswith(_JPEG_SOI):
        if _JPEG_EOI not in data[-64:].rstrip(b"\x00\r\n "):
            raise UserError(f"truncated JPEG (no end-of-image marker): {path}; re-extract or re-download it")
    elif data.startswith(_PNG_MAGIC):
        if b"IEND" not in data[-32:]:
            raise UserError(f"truncated PNG (no IEND chunk): {path}; re-extract or re-download it")
    else:
        raise UserError(f"not a JPEG or PNG image: {path}")


def decode_image(data: bytes, path: str = "<bytes>", size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Decode JPEG/PNG bytes into RGB uint8 ``H x W x 3``; resize to ``size`` = (H, W) if given."""
    _check_complete(data, path)
    flag = cv2.IMREAD_COLOR
    if size is not None and data.startswith(_JPEG_SOI):
        full = _jpeg_size(data)
        if full is not None:
            for factor, reduced in _REDUCED_FLAGS:
                if full[0] // factor >= size[0] and full[1] // factor >= size[1]:
                    flag = reduced
                    break
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        raise UserError(f"could not decode image: {path}; the file is corrupt")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if size is not None and image.shape[:2] != tuple(size):
        image = resize(image, size)
    return image


def read_image(path: str, size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Read an image file as RGB uint8 ``H x W x 3``, resized to ``size`` = (H, W) if given."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc.strerror}") from None
    return decode_image(data, path, size)


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize ``H x W x C`` to ``size`` = (H, W): area interpolation down, bilinear up."""
    height, width = int(size[0]), int(size[1])
    shrink = height < image.shape[0] and width < image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out if out.ndim == 3 else out[:, :, None]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``H x W x 3`` -> float32 ``3 x H x W`` normalised with ImageNet mean/std."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def write_image_atomic(path: str, image_rgb: np.ndarray, params: Sequence[int] = ()) -> None:
    """Write an RGB uint8 image (format from the extension) via a temporary file + os.replace."""
    ext = os.path.splitext(path)[1]
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), list(params))
    if not ok:
        raise RuntimeError(f"could not encode image for {path}")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(buffer.tobytes())
    os.replace(tmp, path)
