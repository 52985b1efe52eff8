"""Geometry as pure functions: the SAFA polar formula (numpy), affine and TPS maps (torch).

Everything above (models, data, tools) imports these; they import nothing of the project
but :mod:`common`. This package file imports only ``typing``, so ``geometry.polar`` loads without torch.
"""
from __future__ import annotations

from typing import Sequence, Tuple


def hw(size: Sequence[int]) -> Tuple[int, int]:
    """``(H, W)`` as ints from any two-element sequence."""
    height, width = (int(v) for v in size)
    return height, width
