"""Image decoding and encoding shared by every dataset, the up-front file checks and label-file
text reading (no torch).

Images are returned as RGB ``uint8`` arrays ``H x W x 3`` (grey and RGBA inputs are
converted). Truncated JPEG/PNG files are an error, not a half-grey image. When a target
size is given, JPEGs are decoded at 1/2, 1/4 or 1/8 resolution by libjpeg's DCT scaling
whenever that still covers the target, then resized with area interpolation.
"""
from __future__ import annotations

import codecs
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from common.errors import UserError
from common.fileio import write_bytes_atomic

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


def _png_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) from a PNG byte string's IHDR chunk, or None."""
    if len(data) < 24 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) of JPEG or PNG bytes from their header (nothing is decoded), or None."""
    return _jpeg_size(data) if data.startswith(_JPEG_SOI) else _png_size(data)


def png_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) from a PNG file's IHDR chunk, or None when it is not a PNG."""
    with open(path, "rb") as handle:
        return _png_size(handle.read(24))


def file_image_size(path: str, limit: int = 1 << 20) -> Optional[Tuple[int, int]]:
    """(height, width) of a JPEG/PNG file from its header (first ``limit`` bytes), or None."""
    try:
        with open(path, "rb") as handle:
            return image_size(handle.read(limit))
    except OSError:
        return None


def check_polar_size(path: str, pano_size: Sequence[int], fix: str = "python -m data.convert_polar") -> None:
    """Refuse polar images that do not fit ``pano_size`` = (H, W): smaller on a side (they would be
    upsampled) or of another aspect ratio (distorted). ``path`` is one of them (all share one size)."""
    size = file_image_size(path)
    height, width = int(pano_size[0]), int(pano_size[1])
    if size is None:
        return
    if size[0] < height or size[1] < width or abs(size[1] / size[0] - width / height) > 0.02 * width / height:
        raise UserError(f"polar image {path} is {size[0]} x {size[1]}, which does not fit --pano_size "
                        f"{height},{width} (polar images need its aspect ratio and at least its size); recreate "
                        f"them with `{fix} --height {height} --width {width} --overwrite`")


def png_complete(path: str) -> bool:
    """Whether the PNG file ``path`` ends with its IEND chunk (False: truncated or not a PNG)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        handle.seek(0, os.SEEK_END)
        handle.seek(max(handle.tell() - 32, 0))
        return head == _PNG_MAGIC and b"IEND" in handle.read()


#: Dataset images with a side below this many pixels are refused (a placeholder or a broken export).
MIN_IMAGE_SIDE = 8


def _check_shape(data: bytes, image: np.ndarray, factor: int, path: str, square: bool, min_side: int) -> None:
    height, width = image_size(data) or (image.shape[0] * factor, image.shape[1] * factor)
    if min(height, width) < min_side:
        raise UserError(f"image is only {height} x {width} pixels: {path}; every image needs at least "
                        f"{min_side} pixels per side: replace it or remove its row from the split")
    if square and height != width:
        raise UserError(f"aerial/satellite image is not square ({height} x {width}): {path}; the polar "
                        f"transform and the rotations need square tiles: replace it or remove its row")


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


def jpeg_reduction(data: bytes, size: Optional[Sequence[int]]) -> int:
    """The DCT scaling factor (1, 2, 4 or 8) :func:`decode_image` uses for JPEG ``data`` and ``size``.

    The largest factor whose reduced image (at least ``floor(full / factor)`` per side) still
    covers ``size`` = (H, W), so the final resize only ever shrinks; 1 for non-JPEGs or no size.
    """
    if size is None or not data.startswith(_JPEG_SOI):
        return 1
    full = _jpeg_size(data)
    if full is None:
        return 1
    for factor, _ in _REDUCED_FLAGS:
        if full[0] // factor >= size[0] and full[1] // factor >= size[1]:
            return factor
    return 1


def decode_image(data: bytes, path: str = "<bytes>", size: Optional[Sequence[int]] = None,
                 reduced: bool = True, square: bool = False, min_side: int = 1) -> np.ndarray:
    """Decode JPEG/PNG bytes into RGB uint8 ``H x W x 3``; resize to ``size`` = (H, W) if given.

    With ``reduced`` (default) a JPEG is decoded at 1/2, 1/4 or 1/8 resolution by libjpeg's
    DCT scaling when that still covers ``size`` (:func:`jpeg_reduction`); pass
    ``reduced=False`` for a full-resolution decode. An image with a side below ``min_side``
    (datasets pass :data:`MIN_IMAGE_SIDE`), or (``square``) a non-square one, is refused.
    Errors name ``path``.
    """
    _check_complete(data, path)
    factor = jpeg_reduction(data, size) if reduced else 1
    flag = dict(_REDUCED_FLAGS).get(factor, cv2.IMREAD_COLOR)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:
        image = None
    if image is None:
        raise UserError(f"could not decode image: {path}; the file is corrupt")
    _check_shape(data, image, factor, path, square, min_side)
    if size is not None and image.shape[:2] != tuple(size):
        image = resize(image, size)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str, size: Optional[Sequence[int]] = None, reduced: bool = True,
               square: bool = False, min_side: int = 1) -> np.ndarray:
    """Read an image file as RGB uint8 ``H x W x 3``, resized to ``size`` = (H, W) if given.

    See :func:`decode_image` for ``reduced``, ``square`` and ``min_side``. A missing, unreadable, truncated or non-image
    file raises :class:`UserError` naming ``path``.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc.strerror}") from None
    return decode_image(data, path, size, reduced, square, min_side)


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize ``H x W x C`` to ``size`` = (H, W): area interpolation down, bilinear up.

    Area is used when no side grows (a side may stay equal); otherwise bilinear. uint8
    area resizes by a non-integer factor run on a float32 copy and round half to even:
    the same arithmetic as OpenCV's uint8 path (identical output), about 25% faster.
    """
    height, width = int(size[0]), int(size[1])
    shrink = height <= image.shape[0] and width <= image.shape[1]
    if not shrink:
        out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    elif image.dtype == np.uint8 and (image.shape[0] % height or image.shape[1] % width):
        out = cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        out = np.clip(np.rint(out, out=out), 0, 255, out=out).astype(np.uint8)
    else:
        out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return out if out.ndim == 3 else out[:, :, None]


def write_image_atomic(path: str, image_rgb: np.ndarray, params: Sequence[int] = ()) -> None:
    """Write an RGB uint8 image (format from the extension) atomically (:func:`write_bytes_atomic`).

    ``params`` are OpenCV ``imencode`` flags (e.g. PNG compression).
    """
    ext = os.path.splitext(path)[1]
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), list(params))
    if not ok:
        raise RuntimeError(f"could not encode image for {path}")
    write_bytes_atomic(path, buffer.tobytes())


def read_text(path: str) -> str:
    """The text of the label file ``path``: UTF-8, a leading byte-order mark dropped. A file that is
    not UTF-8 or cannot be read is a :class:`UserError` naming it (and the line of the first bad
    byte); a missing file raises ``FileNotFoundError`` for the caller to explain."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    data = data[3:] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                        f"save it as UTF-8") from None


def size_hw(value: Sequence[int], name: str) -> Tuple[int, int]:
    """``(H, W)`` from a two-integer sequence; anything else is a UserError naming ``name``."""
    if value is None or len(value) != 2 or int(value[0]) <= 0 or int(value[1]) <= 0:
        raise UserError(f"{name} must be two positive integers H,W; got {value!r}")
    return int(value[0]), int(value[1])


def _usable(entry: os.DirEntry) -> bool:
    """Whether a directory entry can be an image file: a non-empty regular file (or a link to one)."""
    try:
        return entry.is_file() and entry.stat().st_size > 0
    except OSError:
        return False


def find_missing(root: str, rel_paths: Iterable[str]) -> List[str]:
    """The ``rel_paths`` (relative to ``root``) that do not exist or cannot be image files
    (a folder, a broken symbolic link, an empty file), in order.

    Lists each directory once instead of one ``stat`` per file (fast on network disks).
    """
    listings: Dict[str, Dict[str, os.DirEntry]] = {}
    missing = []
    for rel in rel_paths:
        folder, name = os.path.split(os.path.join(root, rel))
        entries = listings.get(folder)
        if entries is None:
            try:
                with os.scandir(folder) as scan:
                    entries = {entry.name: entry for entry in scan}
            except OSError:
                entries = {}
            listings[folder] = entries
        if name not in entries or not _usable(entries[name]):
            missing.append(rel)
    return missing


def why_unusable(path: str) -> str:
    """Why ``path`` is not an image file: ``missing``, ``a folder``, ``a broken symbolic link``,
    ``an empty file`` (or ``unreadable``)."""
    if os.path.islink(path) and not os.path.exists(path):
        return "a broken symbolic link"
    if not os.path.exists(path):
        return "missing"
    if os.path.isdir(path):
        return "a folder"
    return "an empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else "unreadable"


#: How many missing paths an error message lists.
MISSING_EXAMPLES = 5


def list_subdirs(path: str) -> List[str]:
    """Names of the sub-folders of ``path``, sorted ([] when unreadable)."""
    try:
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    except OSError:
        return []


def missing_files_error(root: str, missing: Sequence[str], total: int, kind: str, source: str,
                        hints: Sequence[str] = ()) -> UserError:
    """A :class:`UserError`: how many of the ``total`` ``kind`` files (e.g. "VIGOR satellite";
    "" when ``source`` says enough) named by ``source`` are missing under ``root``, the first
    :data:`MISSING_EXAMPLES` of them, and one ``hint:`` line per hint."""
    paths = [os.path.join(root, rel) for rel in missing[:MISSING_EXAMPLES]]
    reasons = [why_unusable(path) for path in paths]
    examples = "\n  ".join(path if why == "missing" else f"{path} ({why})" for path, why in zip(paths, reasons))
    more = f"\n  ... and {len(missing) - MISSING_EXAMPLES} more" if len(missing) > MISSING_EXAMPLES else ""
    hint_text = "".join(f"\nhint: {hint}" for hint in hints)
    files = f"{kind} files" if kind else "files"
    unusable = " or unusable" if any(why != "missing" for why in reasons) else ""
    return UserError(f"{len(missing)} of {total} {files} are missing{unusable} under {root} (named by {source}):"
                     f"\n  {examples}{more}{hint_text}")
