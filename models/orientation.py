"""Orientation-aware similarity (DSM, Shi et al. CVPR 2020): correlation over circular column shifts.

In the panorama frame (a polar or STN satellite image, a north-aligned panorama) a change of
heading is a circular shift of columns. For a street feature map ``q`` (``C x h x ws``, ``ws <=
w``: a limited field of view) and a satellite feature map ``r`` (``C x h x w``, the full strip)::

    crop_k(r)[..., x] = r[..., (k + x) mod w]                       x in [0, ws), k in [0, w)
    sim_k(q, r)       = <q, crop_k(r)> / (|q| |crop_k(r)|)          normalised correlation
    sim(q, r)         = max_k sim_k(q, r);  shift(q, r) = argmax_k (first k among exact ties)

With ``ws = w`` every window norm is ``|r|``. The best shift is the heading estimate
(:func:`shift_heading`, conventions of :mod:`geometry.heading`): a street strip rolled left
by ``k0`` feature columns, or its centred window, matches at ``k = k0 + (w - ws) // 2``.

Cost of :meth:`CircularCorrelation.__call__` for N queries and M references with
``D = C h ws``: ``N M w D`` multiply-adds (w matrix products of N x D by D x M); extra memory
per reference chunk of ``m`` rows: the unfolded chunk ``m w D`` and the ``N x m x w`` block
of similarities, never N x M x w. Computed in float32 with autocast off.
"""
from __future__ import annotations

from typing import Tuple

import torch

from geometry.heading import FULL_CIRCLE

#: Reference rows per chunk of :meth:`CircularCorrelation.__call__`.
REFERENCE_CHUNK = 256
_EPS = 1e-12


def window_norms(satellite: torch.Tensor, window: int) -> torch.Tensor:
    """``M x w``: ``|crop_k(r)|`` of satellite maps ``M x C x h x w`` for windows of ``window`` columns."""
    width = satellite.shape[-1]
    columns = satellite.square().sum(dim=(1, 2))  # M x w
    index = (torch.arange(width, device=satellite.device)[:, None]
             + torch.arange(window, device=satellite.device)[None]) % width
    return columns[:, index].sum(dim=2).sqrt()


def shift_similarities(street: torch.Tensor, satellite: torch.Tensor) -> torch.Tensor:
    """``N x M x w`` of ``sim_k`` (module doc) for street maps ``N x C x h x ws`` and satellite
    maps ``M x C x h x w``."""
    n, m = street.shape[0], satellite.shape[0]
    window, width = street.shape[-1], satellite.shape[-1]
    if street.shape[1:3] != satellite.shape[1:3] or window > width:
        raise ValueError(f"street maps {tuple(street.shape)} do not fit satellite maps {tuple(satellite.shape)}: "
                         f"same channels and rows, street width <= satellite width")
    index = (torch.arange(width, device=satellite.device)[:, None]
             + torch.arange(window, device=satellite.device)[None]) % width
    crops = satellite[..., index].permute(0, 3, 1, 2, 4).reshape(m * width, -1)  # (M w) x D
    dots = (street.reshape(n, -1) @ crops.t()).view(n, m, width)
    norms = street.reshape(n, -1).norm(dim=1)[:, None, None] * window_norms(satellite, window)[None]
    return dots / norms.clamp_min(_EPS)


def shift_heading(shift: torch.Tensor, window: int, width: int) -> torch.Tensor:
    """Heading in degrees ``[0, 360)`` (float64) of best shifts for ``window`` of ``width`` columns."""
    return torch.remainder((shift.double() - (width - window) // 2) * (FULL_CIRCLE / width), FULL_CIRCLE)


class CircularCorrelation:
    """The DSM similarity of flattened feature maps (descriptors) of ``channels x height x width``.

    ``__call__(street N x (C h ws), satellite M x (C h w))`` returns ``(sim N x M, shift N x M
    long)`` (module doc), streamed over reference chunks; differentiable in ``sim``.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        self.channels, self.height, self.width = int(channels), int(height), int(width)

    def window(self, street_dim: int) -> int:
        """Street feature columns ``ws`` of a street descriptor of length ``street_dim``."""
        window, rest = divmod(int(street_dim), self.channels * self.height)
        if rest or not 1 <= window <= self.width:
            raise ValueError(f"a street descriptor of length {street_dim} is no {self.channels} x {self.height} x ws "
                             f"map with ws <= {self.width}")
        return window

    def maps(self, descriptors: torch.Tensor, width: int) -> torch.Tensor:
        return descriptors.float().view(descriptors.shape[0], self.channels, self.height, width)

    def __call__(self, street: torch.Tensor, satellite: torch.Tensor,
                 chunk: int = REFERENCE_CHUNK) -> Tuple[torch.Tensor, torch.Tensor]:
        window = self.window(street.shape[1])
        if satellite.shape[1] != self.channels * self.height * self.width:
            raise ValueError(f"satellite descriptors must have length {self.channels * self.height * self.width}, "
                             f"got {satellite.shape[1]}")
        queries = self.maps(street, window)
        sims, shifts = [], []
        with torch.autocast(device_type=street.device.type, enabled=False):
            for start in range(0, satellite.shape[0], chunk):
                best = shift_similarities(queries, self.maps(satellite[start:start + chunk], self.width)).max(dim=2)
                sims.append(best.values)
                shifts.append(best.indices)
        return torch.cat(sims, dim=1), torch.cat(shifts, dim=1)

    def heading(self, shift: torch.Tensor, street_dim: int) -> torch.Tensor:
        """Heading estimates (degrees, float64) of best shifts of street descriptors of ``street_dim``."""
        return shift_heading(shift, self.window(street_dim), self.width)
