"""Polar block: agrees with the numpy SAFA reference, batched, a non-persistent grid, float32 under autocast."""
import numpy as np
import pytest
import torch

from common.errors import UserError
from geometry.polar import polar_transform
from models.polar import PolarTransform


def test_polar_block_matches_numpy_reference_on_random_image():
    image = np.random.rand(64, 64, 3).astype(np.float32)
    expected = polar_transform(image, 32, 176)
    block = PolarTransform((64, 64), (32, 176))
    out = block(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert out.shape == (1, 3, 32, 176)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=2e-5)


def test_polar_block_matches_reference_at_cvusa_sizes_batched():
    images = np.random.rand(2, 96, 96, 3).astype(np.float32)
    out = PolarTransform((96, 96), (56, 308))(torch.from_numpy(images).permute(0, 3, 1, 2))
    for b in range(2):
        np.testing.assert_allclose(out[b].permute(1, 2, 0).numpy(), polar_transform(images[b], 56, 308), atol=2e-5)


def test_grid_is_a_non_persistent_buffer():
    block = PolarTransform((64, 64), (32, 176))
    assert "grid" in dict(block.named_buffers())
    assert block.state_dict() == {}
    assert list(block.parameters()) == []


def test_polar_files_is_identity_and_checks_the_size():
    block = PolarTransform((64, 64), (32, 176), polar_files=True)
    polar = torch.randn(2, 3, 32, 176)
    assert block(polar) is polar
    with pytest.raises(UserError, match=r"polar_files.*\[32, 176\].*\[64, 64\]"):
        block(torch.randn(2, 3, 64, 64))


def test_polar_block_keeps_float32_under_autocast():
    block = PolarTransform((64, 64), (32, 176))
    image = torch.rand(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(image)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, block(image))
