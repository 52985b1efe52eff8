"""CVUSA (the CVM-Net / SAFA subset): split CSVs and the paired street/satellite dataset.

Layout under ``data_root`` (datasets.md)::

    splits/train-19zl.csv  splits/val-19zl.csv      aerial,panorama,annotation (relative paths)
    bingmap/19/<id>.jpg                             aerial, 750 x 750, north up
    streetview/panos/<id>.jpg                       panorama, 1232 x 224, north at column W/2
    polarmap/19/<id>.png                            polar aerials (python -m data.convert_polar)

Samples are dicts ``{"street": 3 x Hp x Wp, "satellite": 3 x Hs x Ws, "index": i}`` of
ImageNet-normalised RGB float32 tensors (:func:`data.io.to_tensor`); ``index`` is the
position of the pair in the CSV (so street ``i`` matches satellite ``i``).
"""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from data.augment import paired_augment, sample_rng
from data.io import find_missing, read_image, size_hw, to_tensor, to_uint8_tensor
from helper.errors import UserError

DEFAULT_TRAIN_CSV = "splits/train-19zl.csv"
DEFAULT_VAL_CSV = "splits/val-19zl.csv"
AERIAL_DIR = "bingmap/19"
POLAR_DIR = "polarmap/19"

#: How many missing paths an error message lists.
MISSING_EXAMPLES = 5


def read_split_csv(path: str) -> List[Tuple[str, str, Optional[str]]]:
    """Read a CVUSA split CSV into ``[(aerial_rel, pano_rel, annotation_rel or None), ...]``.

    No header; comma-separated relative paths; every line and field is stripped (CRLF
    endings and trailing spaces are fine); blank lines are skipped; a third field is the
    annotation (None when absent). A line with fewer than 2 fields raises :class:`UserError`
    naming ``path:line``; so does a missing file.
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"split CSV not found: {path}; check --data_root and the csv path") from None
    except UnicodeDecodeError:
        raise UserError(f"split CSV is not a text file: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read split CSV {path}: {exc.strerror}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise UserError(f"{path}:{number}: expected 'aerial,panorama[,annotation]' "
                            f"(comma-separated relative paths), got {line!r}")
        annotation = fields[2] if len(fields) > 2 and fields[2] else None
        pairs.append((fields[0], fields[1], annotation))
    return pairs


def polar_rel_path(aerial_rel: str) -> str:
    """The polar image of an aerial: ``bingmap/19/<id>.jpg`` -> ``polarmap/19/<id>.png``.

    The ``bingmap`` folder component becomes ``polarmap`` and the extension ``.png``; an
    aerial path without a ``bingmap`` component maps to ``polarmap/19/<stem>.png``.
    """
    parts = aerial_rel.replace("\\", "/").split("/")
    stem = os.path.splitext(parts[-1])[0]
    if "bingmap" not in parts[:-1]:
        return f"{POLAR_DIR}/{stem}.png"
    parts = ["polarmap" if part == "bingmap" else part for part in parts[:-1]] + [stem + ".png"]
    return "/".join(parts)


def list_subdirs(path: str) -> List[str]:
    """Names of the sub-folders of ``path``, sorted ([] when unreadable)."""
    try:
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    except OSError:
        return []


def layout_hints(data_root: str, rel_dirs: Iterable[str]) -> List[str]:
    """Hints for folders expected under ``data_root`` that are missing.

    Detects archives extracted one level too deep (``bingmap/bingmap/19``,
    ``streetview/streetview/panos``, ``<data_root>/CVUSA/...``) and missing polar images.
    """
    hints = []
    for rel_dir in dict.fromkeys(rel_dirs):
        expected = os.path.join(data_root, rel_dir)
        if os.path.isdir(expected):
            continue
        found = [sub for sub in list_subdirs(data_root) if os.path.isdir(os.path.join(data_root, sub, rel_dir))]
        first = rel_dir.replace("\\", "/").split("/")[0]
        if first in found:  # e.g. bingmap/bingmap/19: one folder level too many
            hints.append(f"expected folder {expected} does not exist but "
                         f"{os.path.join(data_root, first, rel_dir)} does: the archive was extracted into a "
                         f"nested folder; move its contents up one level: "
                         f"mv {os.path.join(data_root, first, first)}/* {os.path.join(data_root, first)}/")
        elif found:  # e.g. <data_root>/CVUSA/bingmap/19: data_root one level too high
            hints.append(f"expected folder {expected} does not exist but "
                         f"{os.path.join(data_root, found[0], rel_dir)} does: pass --data_root "
                         f"{os.path.join(data_root, found[0])}")
        elif first == "polarmap":
            hints.append(f"polar images are not created yet: run `python -m data.convert_polar "
                         f"--data_root {data_root}` first (or train without --polar_files)")
        else:
            hints.append(f"expected folder {expected} does not exist")
    return hints


def missing_files_error(data_root: str, missing: Sequence[str], total: int, source: str) -> UserError:
    """A :class:`UserError` listing the first few ``missing`` paths, their count and layout hints."""
    examples = "\n  ".join(os.path.join(data_root, rel) for rel in missing[:MISSING_EXAMPLES])
    more = f"\n  ... and {len(missing) - MISSING_EXAMPLES} more" if len(missing) > MISSING_EXAMPLES else ""
    hints = layout_hints(data_root, (os.path.dirname(rel) for rel in missing))
    hint_text = "".join(f"\nhint: {hint}" for hint in hints)
    return UserError(f"{len(missing)} of {total} files referenced by {source} are missing under "
                     f"{data_root}:\n  {examples}{more}{hint_text}")


def resolve_csv(data_root: str, csv: str) -> str:
    """``csv`` relative to ``data_root`` (or absolute); a missing file is a :class:`UserError`."""
    path = csv if os.path.isabs(csv) else os.path.join(data_root, csv)
    if not os.path.isfile(path):
        nested = [os.path.join(data_root, sub) for sub in list_subdirs(data_root)
                  if not os.path.isabs(csv) and os.path.isfile(os.path.join(data_root, sub, csv))]
        hint = f"; it exists under {nested[0]}: pass --data_root {nested[0]}" if nested else ""
        raise UserError(f"split CSV not found: {path}{hint}")
    return path


class CVUSA(Dataset):
    """CVUSA pairs from one split CSV.

    Args:
        data_root: the CVUSA folder (holds ``splits/``, ``bingmap/``, ``streetview/``).
        csv: split CSV, relative to ``data_root`` or absolute (e.g. ``splits/val-19zl.csv``).
        sate_size: (H, W) of the raw aerial tensor (e.g. 256 x 256).
        pano_size: (H, W) of the panorama tensor (e.g. 112 x 616).
        augment: paired random horizontal flip (p = 0.5) of panorama and satellite.
        rotate: paired random rotation by 90 * k degrees (aerial counter-clockwise, panorama
            rolled left by k * W / 4); needs widths divisible by 4 and a square aerial.
        polar_files: read the satellite from ``polarmap/19/<id>.png`` (created by
            ``python -m data.convert_polar``) instead of the raw aerial.
        polar_size: (H, W) of the polar satellite tensor; default ``pano_size``.
        seed: augmentation seed; decisions are a function of (seed, epoch, index)
            (:func:`data.augment.sample_rng`), the epoch set by :meth:`set_epoch`.
        normalise: True (default): float32 ImageNet-normalised tensors. False: uint8
            ``3 x H x W`` tensors, a quarter of the bytes through DataLoader workers' shared
            memory; apply :func:`data.io.normalise` to the batch on the device (same values).

    Every referenced panorama and satellite file is checked up front (a :class:`UserError`
    lists the first few missing paths, how many are missing, and layout hints). Images are
    decoded by :func:`data.io.read_image` (reduced-resolution JPEG decoding + area resize)
    and normalised by :func:`data.io.to_tensor`; augmentation runs on the resized uint8
    arrays (:mod:`data.augment`).
    """

    def __init__(self, data_root: str, csv: str, sate_size: Sequence[int], pano_size: Sequence[int],
                 augment: bool = False, rotate: bool = False, polar_files: bool = False,
                 polar_size: Optional[Sequence[int]] = None, seed: int = 0, normalise: bool = True) -> None:
        if not os.path.isdir(data_root):
            raise UserError(f"CVUSA data root not found: {data_root}; pass --data_root pointing at the "
                            f"folder that holds splits/, bingmap/ and streetview/")
        self.data_root = data_root
        self.csv = resolve_csv(data_root, csv)
        self.pairs = read_split_csv(self.csv)
        if not self.pairs:
            raise UserError(f"split CSV has no pairs: {self.csv}")
        self.sate_size = size_hw(sate_size, "sate_size")
        self.pano_size = size_hw(pano_size, "pano_size")
        self.polar_size = size_hw(polar_size, "polar_size") if polar_size is not None else self.pano_size
        self.augment, self.rotate, self.polar_files = bool(augment), bool(rotate), bool(polar_files)
        self.seed, self.epoch = int(seed), 0
        self.normalise = bool(normalise)
        if self.rotate:
            widths = [self.pano_size[1]] + ([self.polar_size[1]] if self.polar_files else [])
            if any(width % 4 for width in widths):
                raise UserError(f"rotation augmentation rolls panoramas by W/4: panorama/polar widths "
                                f"must be divisible by 4, got {widths}")
            if not self.polar_files and self.sate_size[0] != self.sate_size[1]:
                raise UserError(f"rotation augmentation needs a square sate_size, got {list(self.sate_size)}")
        self.street_paths = [pano for _, pano, _ in self.pairs]
        self.satellite_paths = [polar_rel_path(aerial) if self.polar_files else aerial
                                for aerial, _, _ in self.pairs]
        paths = self.satellite_paths + self.street_paths
        missing = find_missing(data_root, paths)
        if missing:
            raise missing_files_error(data_root, missing, len(paths), self.csv)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation decisions :meth:`__getitem__` uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self.pairs)
        street = read_image(os.path.join(self.data_root, self.street_paths[index]), self.pano_size)
        satellite = read_image(os.path.join(self.data_root, self.satellite_paths[index]),
                               self.polar_size if self.polar_files else self.sate_size)
        if self.augment or self.rotate:
            street, satellite, _ = paired_augment(street, satellite, sample_rng(self.seed, self.epoch, index),
                                                  flip=self.augment, rotate=self.rotate,
                                                  satellite_is_polar=self.polar_files)
        convert = to_tensor if self.normalise else to_uint8_tensor
        return {"street": convert(street), "satellite": convert(satellite), "index": index}
