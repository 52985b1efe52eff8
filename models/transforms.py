"""Satellite transformation blocks behind the ``TRANSFORMS`` registry.

Every block maps a satellite batch ``B x 3 x Hs x Ws`` to ``B x 3 x Hp x Wp``
(``pano_size``), the frame of the street-view panorama, before the satellite backbone.

Convention (all blocks)
-----------------------
* Normalized ``[-1, 1]`` coordinates of ``F.grid_sample`` / ``F.affine_grid`` with
  ``align_corners=False`` (pixel centre of column ``j`` of a width-``W`` image at
  ``(2j + 1) / W - 1``); points are ``(x, y)``; bilinear; zeros outside the input.
* Sampling is output-to-input: a 2x3 ``theta`` maps an output (panorama-frame) point
  ``(x_o, y_o, 1)`` to the satellite point it reads. Both frames are normalized, so the
  identity ``theta`` stretches the square satellite over the wide strip (same as ``none``).
* Learnable blocks (STNs: ``affine``, ``composed_affine``, ``tps``) start at the identity
  (``tps`` optionally at the polar mapping, ``stn_init="polar"``).
* Geometry (grids, matrix products, TPS) runs in float32 even under autocast.

Registry entries are factories ``factory(cfg) -> nn.Module`` taking a validated
:class:`models.config.ModelConfig`; the classes take explicit arguments. The pure
geometry (warps, compositions, the TPS solve, the polar formula) lives in :mod:`geometry`.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from geometry import hw
from geometry.affine import IDENTITY_THETA, affine_warp, compose_affine, sample_fp32
from geometry.polar import polar_map_points
from geometry.tps import control_grid
from models.polar import PolarTransform
from models.registry import Registry
from models.tps import TPSGridGen

TRANSFORMS = Registry("transform")
STN_TRANSFORMS = ("affine", "composed_affine", "tps")


class LocalisationNet(nn.Module):
    """Small CNN regressor for STN parameters; works for any input size.

    Four 3x3 conv + ReLU layers (16, 32, 64, 64 channels; stride 2 each), adaptive
    average pooling to a fixed 4 x 4 grid (keeps a coarse layout, unlike a 1 x 1 global
    pool, and frees the input size), FC 1024 -> 128 + ReLU, and a final FC ``head``
    (128 -> ``out_features``) whose weights start at zero and whose bias is set by the
    owning block, so the initial prediction is exactly that bias for every input.
    """

    def __init__(self, out_features: int, initial_bias: torch.Tensor) -> None:
        super().__init__()
        layers, in_ch = [], 3
        for out_ch in (16, 32, 64, 64):
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(in_ch * 16, 128), nn.ReLU(inplace=True))
        self.head = nn.Linear(128, out_features)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.as_tensor(initial_bias, dtype=torch.float32).reshape(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(self.features(x))
        with torch.autocast(device_type=x.device.type, enabled=False):  # geometry parameters in float32
            return self.head(hidden.float())


class ResizeTransform(nn.Module):
    """``none``: bilinear resize to ``pano_size`` (``F.interpolate``, align_corners=False, no antialias).

    An STN at its identity init gives the same image except on the outer half pixel of an
    upsampled axis, where ``F.interpolate`` clamps to the edge and ``grid_sample`` (zeros
    padding) blends in zeros.
    """

    def __init__(self, pano_size: Sequence[int]) -> None:
        super().__init__()
        self.pano_size = hw(pano_size)

    def forward(self, satellite: torch.Tensor) -> torch.Tensor:
        if tuple(satellite.shape[-2:]) == self.pano_size:
            return satellite
        return F.interpolate(satellite, size=self.pano_size, mode="bilinear", align_corners=False)


class AffineTransform(nn.Module):
    """``affine`` STN: ``theta = loc(satellite)`` (2x3, identity at init), one resample to ``pano_size``.

    The localisation net sees the satellite at its input resolution. The output frame
    is the wide panorama strip, the input frame the (square) satellite, both normalized,
    so ``theta = I`` stretches the satellite over the strip.
    """

    def __init__(self, pano_size: Sequence[int]) -> None:
        super().__init__()
        self.pano_size = hw(pano_size)
        self.loc = LocalisationNet(6, torch.tensor(IDENTITY_THETA))

    def forward_with_theta(self, satellite: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(output B x 3 x Hp x Wp, theta B x 2 x 3)``."""
        theta = self.loc(satellite).float().view(-1, 2, 3)
        return affine_warp(satellite, theta, self.pano_size), theta

    def forward(self, satellite: torch.Tensor) -> torch.Tensor:
        return self.forward_with_theta(satellite)[0]


class ComposedAffineTransform(nn.Module):
    """``composed_affine`` STN: ``stages`` affine corrections composed, one final resample.

    Stage ``k`` (``k = 1..K``) sees the satellite warped by the composition so far,
    ``T_{k-1}``, at the working resolution ``work_size`` (``max(8, Hp // 2) x max(8, Wp // 2)``,
    panorama frame; ``T_0 = I`` so stage 1 sees the stretched satellite), and predicts
    ``A_k`` (identity at init). Compositions are 3x3 products ``T_k = T_{k-1} @ A_k``,
    i.e. ``T_K = A_1 @ A_2 @ ... @ A_K`` (output-to-input, see :func:`compose_affine`).
    The ORIGINAL satellite is resampled once, with ``T_K``, to ``pano_size``.
    """

    def __init__(self, pano_size: Sequence[int], stages: int = 3) -> None:
        super().__init__()
        self.pano_size = hw(pano_size)
        self.work_size = (max(8, self.pano_size[0] // 2), max(8, self.pano_size[1] // 2))
        self.stages = nn.ModuleList(LocalisationNet(6, torch.tensor(IDENTITY_THETA)) for _ in range(int(stages)))

    def forward_with_thetas(self, satellite: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(output B x 3 x Hp x Wp, stage matrices B x K x 2 x 3, composed B x 2 x 3)``."""
        batch = satellite.shape[0]
        composed = satellite.new_tensor(IDENTITY_THETA, dtype=torch.float32).view(1, 2, 3).expand(batch, 2, 3)
        stage_thetas = []
        for loc in self.stages:
            view = affine_warp(satellite, composed, self.work_size)
            stage_thetas.append(loc(view).float().view(batch, 2, 3))
            composed = compose_affine(stage_thetas)
        return affine_warp(satellite, composed, self.pano_size), torch.stack(stage_thetas, dim=1), composed

    def forward(self, satellite: torch.Tensor) -> torch.Tensor:
        return self.forward_with_thetas(satellite)[0]


class TPSTransform(nn.Module):
    """``tps`` STN: the localisation net predicts the ``K`` source points of a TPS.

    Target (output-frame) control points: a ``grid_h x grid_w`` regular grid spanning
    ``[-span, span]`` in x and y (row-major, see :func:`geometry.tps.control_grid`). The
    net sees the satellite at its input resolution and predicts ``K x 2`` raw values,
    (x, y) per point in the satellite's normalized frame; ``bounded`` -> ``source = tanh(raw)``
    (inside the image), else ``source = raw``. Initialisation (zero final weights):
    ``init="identity"``: bias = target points (``atanh`` of them if bounded) -> identity grid;
    ``init="polar"``: bias = the SAFA polar mapping of each target point
    (:func:`geometry.polar.polar_map_points` for ``sate_size -> pano_size``; ``atanh`` of it,
    clamped to ``|.| <= 1 - 1e-4``, if bounded), so the initial output equals the polar
    block's at the control points and approximates it in between.
    """

    def __init__(
        self,
        sate_size: Sequence[int],
        pano_size: Sequence[int],
        grid: Sequence[int] = (6, 10),
        span: float = 0.9,
        bounded: bool = False,
        init: str = "identity",
    ) -> None:
        super().__init__()
        self.sate_size, self.pano_size = hw(sate_size), hw(pano_size)
        grid_h, grid_w = hw(grid)
        self.bounded = bool(bounded)
        target = control_grid(grid_h, grid_w, float(span))
        if init == "identity":
            start = target.double()
        elif init == "polar":
            start = torch.from_numpy(polar_map_points(target.double().numpy(), self.sate_size, self.pano_size))
        else:
            raise ValueError(f"unknown TPS init {init!r}; valid: identity, polar")
        if self.bounded:
            start = torch.atanh(start.clamp(-1.0 + 1e-4, 1.0 - 1e-4))
        self.num_points = target.shape[0]
        self.grid_gen = TPSGridGen(self.pano_size[0], self.pano_size[1], target)
        self.loc = LocalisationNet(2 * self.num_points, start.float().reshape(-1))

    def source_points(self, satellite: torch.Tensor) -> torch.Tensor:
        """Predicted source points ``B x K x 2`` (x, y), satellite frame, float32."""
        raw = self.loc(satellite).float().view(satellite.shape[0], self.num_points, 2)
        return torch.tanh(raw) if self.bounded else raw

    def forward_with_points(self, satellite: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(output B x 3 x Hp x Wp, source points B x K x 2)``."""
        source = self.source_points(satellite)
        return sample_fp32(satellite, self.grid_gen(source)), source

    def forward(self, satellite: torch.Tensor) -> torch.Tensor:
        return self.forward_with_points(satellite)[0]


@TRANSFORMS.register("none")
def _build_none(cfg: "ModelConfig") -> nn.Module:
    return ResizeTransform(cfg.pano_size)


@TRANSFORMS.register("polar")
def _build_polar(cfg: "ModelConfig") -> nn.Module:
    return PolarTransform(cfg.sate_size, cfg.pano_size, polar_files=cfg.polar_files)


@TRANSFORMS.register("affine")
def _build_affine(cfg: "ModelConfig") -> nn.Module:
    return AffineTransform(cfg.pano_size)


@TRANSFORMS.register("composed_affine")
def _build_composed_affine(cfg: "ModelConfig") -> nn.Module:
    return ComposedAffineTransform(cfg.pano_size, stages=cfg.stn_stages)


@TRANSFORMS.register("tps")
def _build_tps(cfg: "ModelConfig") -> nn.Module:
    return TPSTransform(cfg.satellite_input_size, cfg.pano_size, grid=cfg.tps_grid, span=cfg.tps_span,
                        bounded=cfg.tps_bounded, init=cfg.stn_init)


def build_transform(cfg: "ModelConfig") -> nn.Module:
    """The block named by ``cfg.transform`` for a validated :class:`models.config.ModelConfig`."""
    return TRANSFORMS.get(cfg.transform)(cfg)
