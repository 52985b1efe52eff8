"""Thin plate spline (TPS) maps: the float64 functional core behind :class:`models.tps.TPSGridGen`.

Convention
----------
* Points are ``(x, y)`` in ``F.grid_sample`` normalized coordinates, ``align_corners=False``
  (pixel ``(row i, col j)`` of an ``H x W`` image has its centre at
  ``((2j + 1) / W - 1, (2i + 1) / H - 1)``).
* ``target_points`` (``K x 2``) live in the output frame, ``source_points`` (``B x K x 2``)
  in the input frame. The TPS ``f`` maps output to input (output-to-input sampling):
  ``f(target_k) = source_k`` exactly, and ``grid[b, i, j] = f_b(centre of output pixel (i, j))``.
* ``f(p) = a0 + a1 * x + a2 * y + sum_k w_k U(|p - target_k|)`` with the radial kernel
  ``U(r) = r^2 log(r^2)`` (``U(0) = 0``). WarBean/tps_stn_pytorch uses ``0.5 r^2 log(r^2)``;
  a constant factor on ``U`` rescales ``w`` and leaves the interpolant unchanged.
* The ``(K + 3) x (K + 3)`` system is built and inverted in float64 once; the grid is a
  linear map of the source points, ``grid = M @ source``, with ``M`` (``HW x K``) a
  precomputed buffer. The product runs in float32 (float64 for float64 inputs), never
  in half precision, even under autocast.
"""
from __future__ import annotations

import torch


def tps_kernel(points_a: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """``U(|a_i - b_j|)`` for ``points_a`` ``N x 2`` and ``points_b`` ``M x 2``: ``N x M``, U(r) = r^2 log r^2."""
    diff = points_a[:, None, :] - points_b[None, :, :]
    dist2 = (diff * diff).sum(-1)
    safe = torch.where(dist2 > 0, dist2, torch.ones_like(dist2))
    return torch.where(dist2 > 0, dist2 * torch.log(safe), torch.zeros_like(dist2))


def tps_system_inverse(target_points: torch.Tensor) -> torch.Tensor:
    """Inverse of the TPS system matrix ``[[U(P, P), 1, P], [1^T, 0, 0], [P^T, 0, 0]]`` (float64).

    ``target_points`` ``K x 2``; they must not all lie on one line (and be distinct),
    otherwise the system is singular and a ``ValueError`` is raised.
    """
    points = torch.as_tensor(target_points).detach().to(torch.float64).cpu()
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 3:
        raise ValueError(f"target_points must be K x 2 with K >= 3, got shape {tuple(points.shape)}")
    k = points.shape[0]
    system = torch.zeros(k + 3, k + 3, dtype=torch.float64)
    system[:k, :k] = tps_kernel(points, points)
    system[:k, k] = 1.0
    system[k, :k] = 1.0
    system[:k, k + 1 :] = points
    system[k + 1 :, :k] = points.t()
    if torch.linalg.matrix_rank(system).item() < k + 3:
        raise ValueError("target_points are degenerate (repeated or all on one line): the TPS system is singular")
    return torch.linalg.inv(system)


def tps_coefficients(query_points: torch.Tensor, target_points: torch.Tensor) -> torch.Tensor:
    """Matrix ``M`` (``N x K``, float64) with ``f(query_points) = M @ source_points``.

    ``query_points`` ``N x 2`` output-frame positions, ``target_points`` ``K x 2``.
    """
    target = torch.as_tensor(target_points).detach().to(torch.float64).cpu()
    query = torch.as_tensor(query_points).detach().to(torch.float64).cpu()
    k = target.shape[0]
    inverse = tps_system_inverse(target)
    features = torch.cat([tps_kernel(query, target), torch.ones(query.shape[0], 1, dtype=torch.float64), query], dim=1)
    # Right-hand side is [source; zeros(3, 2)], so only the first K columns of the inverse matter.
    return features @ inverse[:, :k]


def pixel_centres(height: int, width: int) -> torch.Tensor:
    """Normalized (x, y) centres of an ``height x width`` pixel grid, row-major: ``HW x 2`` float64."""
    ys = (2.0 * torch.arange(height, dtype=torch.float64) + 1.0) / height - 1.0
    xs = (2.0 * torch.arange(width, dtype=torch.float64) + 1.0) / width - 1.0
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def control_grid(grid_h: int, grid_w: int, span: float) -> torch.Tensor:
    """``grid_h * grid_w`` x 2 (x, y) float32 points on a regular grid spanning ``[-span, span]``.

    Row-major: point ``k = r * grid_w + c`` is ``(x_c, y_r)``.
    """
    ys = torch.linspace(-span, span, int(grid_h), dtype=torch.float64)
    xs = torch.linspace(-span, span, int(grid_w), dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1).float()
