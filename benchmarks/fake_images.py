"""Photo-like random images for benchmarks (their JPEG sizes resemble real photos)."""
from __future__ import annotations

import cv2
import numpy as np


def smooth_noise_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 RGB image of layered smooth noise plus fine grain."""
    image = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((12, 0.52), (48, 0.26), (190, 0.22)):
        coarse = rng.integers(0, 256, (max(2, cells * height // max(height, width)), cells, 3), dtype=np.uint8)
        image += amplitude * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    image += rng.integers(-5, 6, image.shape, dtype=np.int8)
    return np.clip(image, 0, 255).astype(np.uint8)
