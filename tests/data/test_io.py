"""Image IO: RGB order, bad files as UserErrors naming the file, reduced JPEG decoding,
the area resize and the normalisation table."""
import os

import cv2
import numpy as np
import pytest
import torch

from data import io as dio
from data.io import decode_image, jpeg_reduction, read_image, resize, write_image_atomic
from data.tensors import IMAGENET_MEAN, IMAGENET_STD, normalise, to_tensor, to_uint8_tensor
from common.errors import UserError


def _smooth(rng, height, width):
    """Smooth random RGB content (JPEG-friendly, like a photo)."""
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _write_jpeg(path, rgb, quality=95):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return str(path)


def test_png_roundtrip_is_rgb_and_exact(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    path = str(tmp_path / "a.png")
    write_image_atomic(path, rgb)
    assert os.listdir(tmp_path) == ["a.png"]  # no temporary file left
    out = read_image(path)
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)
    assert tuple(out[0, 0]) == (255, 0, 0)  # red stays in channel 0


def test_grey_and_rgba_become_three_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    out = read_image(str(tmp_path / "g.png"))
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 7  # blue, almost transparent
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    out = read_image(str(tmp_path / "a.png"))
    assert out.shape == (2, 2, 3) and tuple(out[0, 0]) == (0, 0, 200)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_file_is_a_user_error_naming_it(tmp_path, ext):
    rgb = _smooth(np.random.default_rng(1), 64, 64)
    path = str(tmp_path / f"img{ext}")
    write_image_atomic(path, rgb)
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated") as info:
        read_image(path)
    assert path in str(info.value)


def test_non_image_empty_missing_and_corrupt_files(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    with pytest.raises(UserError, match="not a JPEG or PNG") as info:
        read_image(str(text))
    assert str(text) in str(info.value)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty") as info:
        read_image(str(empty))
    assert str(empty) in str(info.value)
    with pytest.raises(UserError, match="not found") as info:
        read_image(str(tmp_path / "missing.jpg"))
    assert "missing.jpg" in str(info.value)
    garbage = b"\xff\xd8" + bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)) + b"\xff\xd9"
    with pytest.raises(UserError, match="could not decode image: bad.jpg"):
        decode_image(garbage, "bad.jpg")


def test_jpeg_reduction_factor():
    def jpeg(height, width):
        return cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))[1].tobytes()

    aerial, pano = jpeg(750, 750), jpeg(224, 1232)
    assert jpeg_reduction(aerial, (256, 256)) == 2  # 375 covers 256, 187 does not
    assert jpeg_reduction(aerial, (90, 90)) == 8
    assert jpeg_reduction(aerial, (400, 400)) == 1
    assert jpeg_reduction(aerial, None) == 1
    assert jpeg_reduction(pano, (112, 616)) == 2  # exactly half: no resize needed afterwards
    assert jpeg_reduction(pano, (113, 616)) == 1
    png = cv2.imencode(".png", np.zeros((750, 750, 3), np.uint8))[1].tobytes()
    assert jpeg_reduction(png, (64, 64)) == 1


@pytest.mark.parametrize("full,size", [((750, 750), (256, 256)), ((224, 1232), (112, 616)), ((300, 300), (70, 70))])
def test_reduced_decode_is_close_to_full_decode(tmp_path, full, size):
    rgb = _smooth(np.random.default_rng(2), *full)
    rgb = np.clip(rgb.astype(np.int16) + np.random.default_rng(3).integers(-4, 5, rgb.shape), 0, 255).astype(np.uint8)
    path = _write_jpeg(tmp_path / "a.jpg", rgb, quality=90)
    assert jpeg_reduction(open(path, "rb").read(), size) > 1  # the reduced path is exercised
    reduced = read_image(path, size)
    exact = read_image(path, size, reduced=False)
    assert reduced.shape == exact.shape == (*size, 3)
    diff = np.abs(reduced.astype(np.float32) - exact.astype(np.float32))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 8  # measured: 0.8-1.4 and 3-5
    # and both are close to the ground truth content, resized the same way
    truth = resize(rgb, size).astype(np.float32)
    assert np.abs(reduced - truth).mean() < 3.0


def test_resize_area_down_bilinear_up_and_matches_opencv():
    rng = np.random.default_rng(4)
    for (h, w), (oh, ow) in (((375, 375), (256, 256)), ((101, 333), (50, 77)), ((40, 60), (20, 30)), ((9, 9), (9, 9))):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_AREA)
        assert np.array_equal(resize(image, (oh, ow)), expected)
    image = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    assert np.array_equal(resize(image, (20, 15)), cv2.resize(image, (15, 20), interpolation=cv2.INTER_LINEAR))
    assert resize(image[:, :, :1], (5, 5)).shape == (5, 5, 1)


def test_to_tensor_normalisation_exact():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 128)
    reference = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)
    reference = (reference - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = to_tensor(image)
    assert out.shape == (3, 6, 9) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, reference)
    assert out[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229)
    assert out[1, 0, 0].item() == pytest.approx(-0.456 / 0.224)
    assert torch.equal(to_tensor(image.astype(np.float32)), reference)  # non-uint8 path, same values
    assert torch.equal(to_tensor(image[:, ::-1]), reference.flip(2))  # strided input


def test_uint8_transport_then_normalise_equals_to_tensor():
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (7, 5, 3), dtype=np.uint8) for _ in range(3)]
    packed = [to_uint8_tensor(image) for image in images]
    assert packed[0].dtype == torch.uint8 and packed[0].shape == (3, 7, 5) and packed[0].is_contiguous()
    assert torch.equal(packed[0][:, 2, 4], torch.from_numpy(images[0][2, 4]))
    batch = normalise(torch.stack(packed))
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack([to_tensor(image) for image in images]))  # bit for bit
    assert torch.equal(normalise(packed[1]), to_tensor(images[1]))
    with pytest.raises(ValueError):
        normalise(batch)
    with pytest.raises(ValueError):
        to_uint8_tensor(images[0].astype(np.float32))


def test_write_image_atomic_leaves_nothing_on_failure(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(dio.os, "replace", failing_replace)
    with pytest.raises(UserError, match="cannot write .*x.png: disk full"):  # a user's problem: one message
        write_image_atomic(str(tmp_path / "x.png"), np.zeros((2, 2, 3), np.uint8))
    assert os.listdir(tmp_path) == []
