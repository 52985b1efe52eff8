"""Deterministic procedural noise as a pure function of world coordinates.

Every texture of the synthetic world is evaluated from world positions (metres), never
from a random stream, so two renderings of the same place (an aerial tile and its
overlapping neighbour, or the aerial and the panorama) see the same ground.
"""
from __future__ import annotations

import numpy as np

_U32 = np.uint32


def hash2(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """uint32 hash of integer lattice coordinates (broadcasting ``ix`` against ``iy``)."""
    ix = np.asarray(ix).astype(np.int64).astype(_U32)
    iy = np.asarray(iy).astype(np.int64).astype(_U32)
    with np.errstate(over="ignore"):
        h = (ix * _U32(0x8DA6B343)) ^ (iy * _U32(0xD8163841)) ^ _U32(seed & 0xFFFFFFFF)
        h ^= h >> _U32(16)
        h *= _U32(0x85EBCA6B)
        h ^= h >> _U32(13)
        h *= _U32(0xC2B2AE35)
        h ^= h >> _U32(16)
    return h


def hash_unit(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Hash of lattice coordinates mapped to float32 in [0, 1)."""
    return (hash2(ix, iy, seed) >> _U32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def grid_noise(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Value noise in [0, 1] on the grid ``ys x xs`` (1-D world coordinates in metres).

    Returns float32 ``len(ys) x len(xs)``; the feature size is ``scale`` metres.
    Separable: lattice values are interpolated along x, then along y.
    """
    fx = np.asarray(xs, dtype=np.float64) / scale
    fy = np.asarray(ys, dtype=np.float64) / scale
    ix = np.floor(fx).astype(np.int64)
    iy = np.floor(fy).astype(np.int64)
    wx = _smooth(fx - ix).astype(np.float32)
    wy = _smooth(fy - iy).astype(np.float32)
    lx = np.arange(ix.min(), ix.max() + 2)
    ly = np.arange(iy.min(), iy.max() + 2)
    lattice = hash_unit(lx[None, :], ly[:, None], seed)
    ax = ix - lx[0]
    ay = iy - ly[0]
    along_x = lattice[:, ax] * (1.0 - wx) + lattice[:, ax + 1] * wx
    return along_x[ay] * (1.0 - wy)[:, None] + along_x[ay + 1] * wy[:, None]


def grid_fbm(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of :func:`grid_noise` octaves (scale halves, amplitude halves), in [0, 1]."""
    total = np.zeros((len(ys), len(xs)), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amp * grid_noise(xs, ys, scale / (2 ** octave), seed + 7919 * octave)
        norm += amp
        amp *= 0.5
    return total / norm


def point_noise(x: np.ndarray, y: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Value noise in [0, 1] at arbitrary points ``(x, y)`` (same-shape arrays, metres)."""
    fx = np.asarray(x, dtype=np.float64) / scale
    fy = np.asarray(y, dtype=np.float64) / scale
    ix = np.floor(fx)
    iy = np.floor(fy)
    wx = _smooth(fx - ix).astype(np.float32)
    wy = _smooth(fy - iy).astype(np.float32)
    ix = ix.astype(np.int64)
    iy = iy.astype(np.int64)
    v00 = hash_unit(ix, iy, seed)
    v10 = hash_unit(ix + 1, iy, seed)
    v01 = hash_unit(ix, iy + 1, seed)
    v11 = hash_unit(ix + 1, iy + 1, seed)
    top = v00 + (v10 - v00) * wx
    bottom = v01 + (v11 - v01) * wx
    return top + (bottom - top) * wy


def point_fbm(x: np.ndarray, y: np.ndarray, scale: float, seed: int, octaves: int = 2) -> np.ndarray:
    """Fractal sum of :func:`point_noise` octaves, in [0, 1]."""
    total = np.zeros(np.broadcast(np.asarray(x), np.asarray(y)).shape, dtype=np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amp * point_noise(x, y, scale / (2 ** octave), seed + 7919 * octave)
        norm += amp
        amp *= 0.5
    return total / norm
