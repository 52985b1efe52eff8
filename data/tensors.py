"""Images as tensors: ImageNet normalisation, uint8 transport, and their exact equality.

``to_tensor`` (float32, normalised in the worker) and ``to_uint8_tensor`` + ``normalise``
(uint8 through the DataLoader, normalised on the device) give the same values bit for bit.
Torchvision's ImageNet weights expect RGB in [0, 1] with these mean/std.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalisation_table() -> np.ndarray:
    """``3 x 1 x 256`` float32: ``(v / 255 - mean[c]) / std[c]`` for every uint8 ``v``, in float32 ops."""
    values = torch.arange(256, dtype=torch.float32).div_(255.0).repeat(3, 1)
    values.sub_(torch.tensor(IMAGENET_MEAN).view(3, 1)).div_(torch.tensor(IMAGENET_STD).view(3, 1))
    return np.ascontiguousarray(values.numpy()[:, None, :])


_NORMALISATION_TABLE = _normalisation_table()


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB ``H x W x 3`` -> contiguous float32 ``3 x H x W`` normalised with ImageNet mean/std.

    ``(image / 255 - mean) / std`` per channel, computed in float32; uint8 inputs go through
    a 256-entry lookup table per channel (the same values, bit for bit, about 3x faster).
    """
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        out = np.empty((3, image.shape[0], image.shape[1]), dtype=np.float32)
        for channel, plane in enumerate(cv2.split(image)):
            cv2.LUT(plane, _NORMALISATION_TABLE[channel], dst=out[channel])
        return torch.from_numpy(out)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std).contiguous()


def to_uint8_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``H x W x 3`` -> contiguous uint8 ``3 x H x W`` (not normalised).

    For cheap DataLoader transport (a quarter of the float32 bytes); :func:`normalise`
    turns a batch of these into exactly what :func:`to_tensor` returns, on any device.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 ImageNet-normalised, bit-identical to :func:`to_tensor`.

    Runs on the tensor's device (normalise a transported uint8 batch after ``.to(device)``).
    """
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected uint8 (..., 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    out = images.float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=out.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=out.device).view(3, 1, 1)
    return out.sub_(mean).div_(std)


def converter(normalise: bool):
    """How a dataset turns RGB uint8 images into tensors.

    ``normalise=True``: :func:`to_tensor` (float32, ImageNet-normalised). ``False``:
    :func:`to_uint8_tensor`, a quarter of the bytes through DataLoader workers' shared
    memory; :func:`normalise` on the device then gives the same values bit for bit.
    """
    return to_tensor if normalise else to_uint8_tensor
