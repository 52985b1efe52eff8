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

Registry entries are factories ``factory(cfg) -> nn.Module`` taking the resolved model
config (see :func:`models.resolve_config`); the classes take explicit arguments.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError
from models.polar import PolarTransform, polar_map_points
from models.registry import Registry
from models.tps import TPSGridGen, control_grid

TRANSFORMS = Registry("transform")
STN_TRANSFORMS = ("affine", "composed_affine", "tps")


def _pair(size: Sequence[int]) -> Tuple[int, int]:
    height, width = (int(v) for v in size)
    return height, width


def _sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear, zero-padded, align_corners=False ``grid_sample`` in float32 (autocast off)."""
    with torch.autocast(device_type=image.device.type, enabled=False):
        out = F.grid_sample(image.float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(image.dtype)


def affine_warp(image: torch.Tensor, theta: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """Resample ``image`` (``B x C x H x W``) with 2x3 ``theta`` (``B x 2 x 3``) to ``out_size``.

    Output-to-input: output point ``(x, y)`` reads input point ``theta @ (x, y, 1)``.
    """
    out_h, out_w = _pair(out_size)
    with torch.autocast(device_type=image.device.type, enabled=False):
        grid = F.affine_grid(theta.float(), [image.shape[0], image.shape[1], out_h, out_w], align_corners=False)
    return _sample(image, grid)


def to_homogeneous(theta: torch.Tensor) -> torch.Tensor:
    """``B x 2 x 3`` affine matrices -> ``B x 3 x 3`` with last row ``(0, 0, 1)``."""
    last = theta.new_tensor([0.0, 0.0, 1.0]).expand(theta.shape[0], 1, 3)
    return torch.cat([theta, last], dim=1)


def compose_affine(stage_thetas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Compose output-to-input 2x3 matrices of successive warps: ``A_1 @ A_2 @ ... @ A_K``.

    Stage ``k`` warps the image already warped by stages ``1..k-1``; reading through
    ``A_k`` then through the earlier composition gives the product in this order. Each
    entry is ``B x 2 x 3``; the result is ``B x 2 x 3`` (float32 or float64).
    """
    dtype = torch.float64 if stage_thetas[0].dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=stage_thetas[0].device.type, enabled=False):
        composed = to_homogeneous(stage_thetas[0].to(dtype))
        for theta in stage_thetas[1:]:
            composed = composed @ to_homogeneous(theta.to(dtype))
    return composed[:, :2, :]


IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


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
        self.pano_size = _pair(pano_size)

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
        self.pano_size = _pair(pano_size)
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
        if int(stages) < 1:
            raise UserError(f"stn_stages must be >= 1 for composed_affine, got {stages}")
        self.pano_size = _pair(pano_size)
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
    ``[-span, span]`` in x and y (row-major, see :func:`models.tps.control_grid`). The
    net sees the satellite at its input resolution and predicts ``K x 2`` raw values,
    (x, y) per point in the satellite's normalized frame; ``bounded`` -> ``source = tanh(raw)``
    (inside the image), else ``source = raw``. Initialisation (zero final weights):
    ``init="identity"``: bias = target points (``atanh`` of them if bounded) -> identity grid;
    ``init="polar"``: bias = the SAFA polar mapping of each target point
    (:func:`models.polar.polar_map_points` for ``sate_size -> pano_size``; ``atanh`` of it,
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
        self.sate_size, self.pano_size = _pair(sate_size), _pair(pano_size)
        grid_h, grid_w = _pair(grid)
        if grid_h < 2 or grid_w < 2:
            raise UserError(f"tps_grid must be [GH, GW] with GH, GW >= 2, got {list(grid)}")
        if not 0.0 < float(span) <= 1.0:
            raise UserError(f"tps_span must be in (0, 1], got {span}")
        self.bounded = bool(bounded)
        target = control_grid(grid_h, grid_w, float(span))
        if init == "identity":
            start = target.double()
        elif init == "polar":
            start = torch.from_numpy(polar_map_points(target.double().numpy(), self.sate_size, self.pano_size))
        else:
            raise UserError(f"unknown stn_init {init!r}; valid: identity, polar")
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
        return _sample(satellite, self.grid_gen(source)), source

    def forward(self, satellite: torch.Tensor) -> torch.Tensor:
        return self.forward_with_points(satellite)[0]


def _input_size(cfg: dict) -> Tuple[int, int]:
    """Satellite input size the block receives: ``pano_size`` for polar files, else ``sate_size``."""
    return _pair(cfg["pano_size"] if cfg["polar_files"] else cfg["sate_size"])


@TRANSFORMS.register("none")
def _build_none(cfg: dict) -> nn.Module:
    return ResizeTransform(cfg["pano_size"])


@TRANSFORMS.register("polar")
def _build_polar(cfg: dict) -> nn.Module:
    return PolarTransform(cfg["sate_size"], cfg["pano_size"], polar_files=cfg["polar_files"])


@TRANSFORMS.register("affine")
def _build_affine(cfg: dict) -> nn.Module:
    return AffineTransform(cfg["pano_size"])


@TRANSFORMS.register("composed_affine")
def _build_composed_affine(cfg: dict) -> nn.Module:
    return ComposedAffineTransform(cfg["pano_size"], stages=cfg["stn_stages"])


@TRANSFORMS.register("tps")
def _build_tps(cfg: dict) -> nn.Module:
    if cfg["stn_init"] == "polar" and cfg["polar_files"]:
        raise UserError(
            "stn_init 'polar' starts the TPS at the polar mapping of a raw satellite image, but polar_files "
            "feeds images that are already polar; use stn_init 'identity' with polar_files"
        )
    return TPSTransform(
        _input_size(cfg),
        cfg["pano_size"],
        grid=cfg["tps_grid"],
        span=cfg["tps_span"],
        bounded=cfg["tps_bounded"],
        init=cfg["stn_init"],
    )


def build_transform(cfg: dict) -> nn.Module:
    """The block named ``cfg["transform"]`` for a resolved model config."""
    return TRANSFORMS.get(cfg["transform"])(cfg)
