"""Atomic file writers and JSON-lines reading (standard library only).

Every writer goes through :func:`write_bytes_atomic`: the bytes land in ``<path>.tmp<pid>``
and are ``os.replace``d into place, so a reader never sees a half-written file and a
failure leaves the old file (or nothing) behind.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, List


def write_bytes_atomic(path: str, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` via ``<path>.tmp<pid>`` + ``os.replace``: readers never see a
    half-written file, and the temporary file is removed on failure."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, value: Any) -> None:
    """``value`` as indented, key-sorted JSON (one trailing newline), written atomically."""
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_jsonl_atomic(path: str, rows: Iterable[dict]) -> None:
    """Replace ``path`` by ``rows``, one key-sorted JSON object per line, atomically."""
    write_bytes_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode("utf-8"))


def read_jsonl(path: str) -> List[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped); ``[]`` when it does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
