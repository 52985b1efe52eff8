"""The CVUSA layout (the CVM-Net / SAFA subset): paths, split CSVs, its settings (no torch).

Layout under ``data_root`` (docs/datasets.md)::

    splits/train-19zl.csv  splits/val-19zl.csv      aerial,panorama,annotation (relative paths)
    bingmap/19/<id>.jpg                             aerial, 750 x 750, north up
    streetview/panos/<id>.jpg                       panorama, 1232 x 224, north at column W/2
    polarmap/19/<id>.png                            polar aerials (python -m data.convert_polar)

Optional, for ``--sampling gps``: a GPS CSV (``--gps_csv``, e.g. ``gps.csv`` of the synthetic
world) with the header ``id,lat,lon`` and one row per pair: ``id`` is the aerial's file stem
(``0000001`` for ``bingmap/19/0000001.jpg``; numeric ids compare as numbers), ``lat`` /
``lon`` in degrees.

Optional, for ``--regress_offset``, ``--lambda_recentre`` and ``--pose dense`` (:data:`OFFSET_TERMS`): an offsets CSV (``--offsets_csv``, default ``offsets.csv``;
real CVUSA has none, the synthetic world written with ``--max_offset`` has it) with the header
``id,dx_px,dy_px``: the camera sits at aerial pixel (row ``S/2 + dy_px``, column ``S/2 + dx_px``),
dx east, dy south, in pixels of the aerial file of side ``S`` (:func:`pair_deltas`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from common.errors import UserError
from common.settings import check_settings, setting
from data import io
from data.io import list_subdirs

#: The training flags that read the offset labels (``--offsets_csv``).
OFFSET_TERMS = "--regress_offset / --lambda_recentre / --pose dense"
DEFAULT_TRAIN_CSV = "splits/train-19zl.csv"
DEFAULT_VAL_CSV = "splits/val-19zl.csv"
AERIAL_DIR = "bingmap/19"
#: Ground side of a CVUSA aerial in metres (750 px at about 0.22 m/px, zoom 19).
AERIAL_SIDE_M = 165.0
POLAR_DIR = "polarmap/19"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _line_mistake(fields: List[str], first: bool) -> Optional[str]:
    """The likely cause when a CSV line is not ``aerial,panorama[,annotation]`` paths, or None."""
    if len(fields) < 2 or not fields[0] or not fields[1]:
        return "expected 'aerial,panorama[,annotation]' (comma-separated relative paths)"
    if any(field[:1] in "\"'" or field[-1:] in "\"'" for field in fields if field):
        return "quoted fields are not supported: remove the quotes"
    if any("\\" in field for field in fields):
        return "Windows backslashes in a path: write it with '/' (e.g. bingmap/19/0000001.jpg)"
    if first and not any(field.lower().endswith(IMAGE_SUFFIXES) for field in fields[:2]):
        return "this looks like a header line; split CSVs have none: delete it"
    return None


def read_split_csv(path: str) -> List[Tuple[str, str, Optional[str]]]:
    """Read a CVUSA split CSV into ``[(aerial_rel, pano_rel, annotation_rel or None), ...]``.

    No header; comma-separated relative paths; every line and field is stripped (CRLF
    endings and trailing spaces are fine); blank lines are skipped; a third field is the
    annotation (None when absent). A :class:`UserError` naming ``path:line`` and the likely
    cause refuses a line with fewer than 2 fields, a header line, quoted fields, Windows
    backslashes, and an aerial or panorama listed twice (a repeated pair changes what
    recall@k means); so does a missing file.
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
    pairs: List[Tuple[str, str, Optional[str]]] = []
    seen: Dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        fields = [field.strip() for field in line.split(",")]
        mistake = _line_mistake(fields, first=not pairs)
        if mistake:
            raise UserError(f"{path}:{number}: {mistake}; got {line!r}")
        for kind, rel in (("aerial", fields[0]), ("panorama", fields[1])):
            if (kind, rel) in seen:
                raise UserError(f"{path}:{number}: {kind} {rel} is listed again (first at line {seen[kind, rel]}); "
                                f"each pair may appear once (a repeated row changes what recall@k means): "
                                f"delete the repeated row")
            seen[kind, rel] = number
        annotation = fields[2] if len(fields) > 2 and fields[2] else None
        pairs.append((fields[0], fields[1], annotation))
    return pairs


#: Written by ``python -m data.synthetic --heading random`` / ``--fov DEG``: header
#: ``id,heading_deg,fov_deg``; each panorama's heading and field of view (geometry.heading).
HEADINGS_FILE = "headings.csv"
HEADINGS_HEADER = "id,heading_deg,fov_deg"


def read_headings(data_root: str) -> Dict[str, Tuple[float, float]]:
    """``{id: (heading_deg, fov_deg)}`` of ``<data_root>/headings.csv``; empty when there is none
    (north-aligned full panoramas, as in the real CVUSA). Read like :func:`read_gps_csv` (ids as
    written): a row without a finite heading and a field of view in (0, 360], an id listed twice
    or text that is not UTF-8 is a :class:`UserError` naming the file and line."""
    path = os.path.join(data_root, HEADINGS_FILE)
    if not os.path.isfile(path):
        return {}
    return _read_id_csv(path, HEADINGS_FILE, HEADINGS_HEADER, " with a finite heading and a field of view in (0, 360] "
                        "degrees", _heading, "", key=str)


def _heading(heading: float, fov: float) -> Tuple[float, float]:
    if not (np.isfinite(heading) and 0.0 < fov <= 360.0):
        raise ValueError
    return heading % 360.0, fov


def check_column_order(csv: str, aerial: Tuple[int, int], panorama: Tuple[int, int]) -> None:
    """Refuse a split whose first row has the panorama first: aerials are square, panoramas wide.
    ``aerial`` / ``panorama`` are the (H, W) of the first row's two images."""
    if aerial[0] != aerial[1] and panorama[0] == panorama[1] and aerial[1] > aerial[0]:
        raise UserError(f"{csv}: the first row names a {aerial[0]} x {aerial[1]} image first and a square "
                        f"{panorama[0]} x {panorama[1]} one second: the columns look swapped; the order is "
                        f"aerial,panorama[,annotation]")


def polar_path(aerial_rel: str) -> str:
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
    """:func:`data.io.missing_files_error` with the CVUSA layout hints."""
    hints = layout_hints(data_root, (os.path.dirname(rel) for rel in missing))
    return io.missing_files_error(data_root, missing, total, "", source, hints)


def resolve_csv(data_root: str, csv: str) -> str:
    """``csv`` relative to ``data_root`` (or absolute); a missing file is a :class:`UserError`."""
    path = csv if os.path.isabs(csv) else os.path.join(data_root, csv)
    if not os.path.isfile(path):
        nested = [os.path.join(data_root, sub) for sub in list_subdirs(data_root)
                  if not os.path.isabs(csv) and os.path.isfile(os.path.join(data_root, sub, csv))]
        hint = f"; it exists under {nested[0]}: pass --data_root {nested[0]}" if nested else ""
        raise UserError(f"split CSV not found: {path}{hint}")
    return path


GPS_HEADER = "id,lat,lon"
OFFSETS_HEADER = "id,dx_px,dy_px"
#: ``--offsets_csv`` when none is given (relative to ``data_root``): what the synthetic world writes.
DEFAULT_OFFSETS_CSV = "offsets.csv"


def _gps_key(ident: str) -> str:
    """An id as compared: numeric ids as numbers (``0000001`` == ``1``)."""
    return str(int(ident)) if ident.isdigit() else ident


def _read_id_csv(path: str, flag: str, header: str, rule: str, parse, fix: str,
                 key=None) -> Dict[str, Tuple[float, float]]:
    """``{key(id): parse(a, b)}`` of the ``id,a,b`` CSV of ``flag``; ids as ``key`` (default
    :func:`_gps_key`) compares them.

    The ``header`` line is optional; blank lines are skipped. A :class:`UserError` naming
    ``path:line`` refuses a row that is not an id and two numbers or that ``parse`` refuses (a
    ``ValueError``; ``rule`` says what it accepts), and an id listed twice; a file that is not
    UTF-8 is one too (:func:`data.io.read_text`), and a missing file, ending with ``fix``.
    """
    key = key or _gps_key
    try:
        lines = io.read_text(path).splitlines()
    except FileNotFoundError:
        raise UserError(f"{flag} file not found: {path}; {fix}") from None
    values: Dict[str, Tuple[float, float]] = {}
    first: Dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        fields = [field.strip() for field in line.strip().split(",")]
        if fields == [""] or (not values and not first and ",".join(fields).lower() == header):
            continue
        try:
            if len(fields) != 3 or not fields[0]:
                raise ValueError
            value = parse(float(fields[1]), float(fields[2]))
        except ValueError:
            raise UserError(f"{path}:{number}: expected '{header}'{rule}, got {line.strip()!r}") from None
        ident = key(fields[0])
        if ident in first:
            raise UserError(f"{path}:{number}: id {fields[0]} is listed again (first at line {first[ident]}); "
                            f"each pair has one row: delete the repeated row")
        first[ident] = number
        values[ident] = value
    return values


def _position(lat: float, lon: float) -> Tuple[float, float]:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError
    return lat, lon


def _offset(half: float):
    """The parser of offsets within ``half`` pixels of the aerial's centre (``inf``: any finite)."""
    def parse(dx: float, dy: float) -> Tuple[float, float]:
        if not (np.isfinite(dx) and np.isfinite(dy) and abs(dx) <= half and abs(dy) <= half):
            raise ValueError
        return dx, dy
    return parse


def read_gps_csv(path: str) -> Dict[str, Tuple[float, float]]:
    """``{id: (lat, lon)}`` of a GPS CSV (see the module doc); ids as :func:`_gps_key` compares them.

    The header ``id,lat,lon`` is optional; blank lines are skipped. A :class:`UserError` naming
    ``path:line`` refuses a row that is not three fields, a latitude outside [-90, 90] or a
    longitude outside [-180, 180] or not a number, and an id listed twice; so does a missing file.
    """
    return _read_id_csv(path, "--gps_csv", GPS_HEADER,
                        " with latitude in [-90, 90] and longitude in [-180, 180] degrees", _position,
                        f"pass a CSV of '{GPS_HEADER}' rows (relative to --data_root or absolute)")


def read_offsets_csv(path: str, side: Optional[int] = None) -> Dict[str, Tuple[float, float]]:
    """``{id: (dx_px, dy_px)}`` of an offsets CSV (see the module doc), read like :func:`read_gps_csv`
    (finite numbers; given the aerial ``side`` S, each within S/2 of the centre: the camera inside the
    aerial); a missing file is a :class:`UserError` saying where offset labels come from."""
    half = float("inf") if side is None else side / 2
    rule = " with finite pixel offsets" + ("" if side is None else
                                           f" in [-{half:g}, {half:g}] (the camera inside the {side} x {side} aerial)")
    return _read_id_csv(path, "--offsets_csv", OFFSETS_HEADER, rule, _offset(half),
                        f"{OFFSET_TERMS} learn from offset labels and CVUSA has no offset labels; synthetic "
                        f"worlds written with `python -m data.synthetic --layout cvusa --max_offset F` have them "
                        f"({DEFAULT_OFFSETS_CSV}). Pass --offsets_csv FILE (a CSV of '{OFFSETS_HEADER}' rows, "
                        f"relative to --data_root or absolute) or drop {OFFSET_TERMS}")


def _pair_rows(table: Dict[str, Tuple[float, float]], path: str, aerial_rels: Sequence[str], split_csv: str,
               flag: str, feature: str) -> np.ndarray:
    """(N, 2) float64 rows of ``table`` (read from ``path``, given as ``flag``) for the pairs whose
    aerials are ``aerial_rels`` (the rows of ``split_csv``); a pair without a row is a :class:`UserError`."""
    out = np.empty((len(aerial_rels), 2), dtype=np.float64)
    for row, aerial in enumerate(aerial_rels):
        ident = os.path.splitext(os.path.basename(aerial))[0]
        value = table.get(_gps_key(ident))
        if value is None:
            raise UserError(f"{flag} {path} has no row for id {ident} (aerial {aerial}, {split_csv} line "
                            f"{row + 1}); every training pair needs one: add it, or train without {feature}")
        out[row] = value
    return out


def pair_positions(path: str, aerial_rels: Sequence[str], split_csv: str) -> np.ndarray:
    """(N, 2) latitude, longitude of the pairs whose aerials are ``aerial_rels`` (the rows of
    ``split_csv``), from the GPS CSV ``path``; a pair without a row is a :class:`UserError`."""
    return _pair_rows(read_gps_csv(path), path, aerial_rels, split_csv, "--gps_csv", "--sampling gps")


def pair_deltas(path: str, aerial_rels: Sequence[str], split_csv: str, side: Optional[int] = None) -> np.ndarray:
    """(N, 2) label deltas ``(d0, d1) = (dy_px, -dx_px)`` of the pairs whose aerials are ``aerial_rels``
    from the offsets CSV ``path``: VIGOR's convention (:mod:`data.vigor`), in pixels of the written
    aerial, so the camera sits at row ``S/2 + d0``, column ``S/2 - d1`` of an aerial of side ``S``
    (given as ``side``: a row outside the aerial is refused, :func:`read_offsets_csv`)."""
    offsets = _pair_rows(read_offsets_csv(path, side), path, aerial_rels, split_csv, "--offsets_csv", OFFSET_TERMS)
    return np.stack([offsets[:, 1], -offsets[:, 0]], axis=1)


#: Model input sizes (H, W) on CVUSA: SAFA's and Toker et al.'s (raw aerial, panorama = polar image).
SATE_SIZE = (256, 256)
PANO_SIZE = (112, 616)


@dataclass(frozen=True)
class CVUSAConfig:
    """Where CVUSA is and which split files a run reads (paths relative to ``data_root``)."""

    data_root: str = setting(os.environ.get("CVUSA_ROOT", "/data/CVUSA"),
                             "CVUSA folder (holds splits/, bingmap/, streetview/); or set CVUSA_ROOT",
                             evaluation=True)
    train_csv: str = setting(DEFAULT_TRAIN_CSV, "training split, relative to data_root")
    val_csv: str = setting(DEFAULT_VAL_CSV, "evaluation split, relative to data_root (the literature's test split)",
                           evaluation=True)
    gps_csv: Optional[str] = setting(None, "positions of the training pairs for --sampling gps: a CSV of "
                                           "'id,lat,lon' rows (id = the aerial's file stem), relative to data_root; "
                                           "the synthetic world writes gps.csv", default_text="none")
    offsets_csv: str = setting(DEFAULT_OFFSETS_CSV, f"offset labels for {OFFSET_TERMS} (read with them only): a "
                                                    f"CSV of '{OFFSETS_HEADER}' rows (id = the aerial's file stem), "
                                                    "relative to data_root; real CVUSA has none, the synthetic "
                                                    "world written with --max_offset has offsets.csv")

    def __post_init__(self) -> None:
        check_settings(self)

    def inert(self, offset_labels: bool) -> Dict[str, str]:
        """``{setting: the flag that would make it act}``: the offset labels are read by the offset terms only."""
        return {} if offset_labels else {"offsets_csv": OFFSET_TERMS.replace(" / ", " or ")}

    def check_sampling(self, sampling: str) -> None:
        """The batch sampling's data needs: ``gps`` reads ``--gps_csv``, nothing else does."""
        if sampling == "gps" and self.gps_csv is None:
            raise UserError("--sampling gps on CVUSA needs the pairs' positions: pass --gps_csv FILE (a CSV of "
                            "'id,lat,lon' rows, relative to --data_root; the synthetic world writes gps.csv)")
        if sampling != "gps" and self.gps_csv is not None:
            raise UserError("--gps_csv is read by --sampling gps only; drop it or pass --sampling gps")
