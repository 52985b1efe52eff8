"""Atomic file writers, JSON-lines reading, output-path checks and folder locks (standard library only).

Every writer goes through :func:`write_bytes_atomic`: the bytes land in ``<path>.tmp<pid>``
and are ``os.replace``d into place, so a reader never sees a half-written file and a
failure leaves the old file (or nothing) behind. :func:`check_output_dir` and
:func:`check_output_file` find an unwritable output before the work starts;
:func:`lock_folder` claims a folder for the lifetime of the process.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from typing import Any, Iterable, List, Optional

from common.errors import UserError


def write_bytes_atomic(path: str, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` via ``<path>.tmp<pid>`` + ``os.replace``: readers never see a
    half-written file, and the temporary file is removed on failure. A failed write (disk full,
    read-only or removed folder) is a :class:`UserError` naming ``path``; the old file is intact."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}; free disk space or fix the folder's "
                            f"permissions") from None
        raise


def write_json_atomic(path: str, value: Any) -> None:
    """``value`` as indented, key-sorted strict JSON (one trailing newline), written atomically.
    A NaN or infinite number is a ``ValueError`` (a bug: undefined values are None, JSON null);
    nothing is written then."""
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8"))


def write_jsonl_atomic(path: str, rows: Iterable[dict]) -> None:
    """Replace ``path`` by ``rows``, one key-sorted strict JSON object per line, atomically (a NaN or
    infinite number: as :func:`write_json_atomic`)."""
    text = "".join(json.dumps(row, sort_keys=True, allow_nan=False) + "\n" for row in rows)
    write_bytes_atomic(path, text.encode("utf-8"))


def read_jsonl(path: str) -> List[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped); ``[]`` when it does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_output_dir(path: str, what: str) -> None:
    """Raise a :class:`UserError` unless folder ``path`` exists or can be created, and files can be
    written into it. Leaves no trace: a probe file in the nearest existing folder is removed at
    once and that folder's times are restored."""
    base = _existing_ancestor(path)
    if not os.path.isdir(base):
        where = "is" if base == os.path.abspath(path) else f"is inside {base}, which is"
        raise UserError(f"{what} {path} {where} a file, not a folder; choose another path")
    times = os.stat(base)
    try:
        handle, probe = tempfile.mkstemp(prefix=".write_probe", dir=base)
        os.close(handle)
        os.remove(probe)
        os.utime(base, ns=(times.st_atime_ns, times.st_mtime_ns))
    except OSError as exc:
        raise UserError(f"{what} {path} is not writable ({exc.strerror or exc} in {base}); choose a folder you "
                        f"can write to") from None


def check_output_file(path: str, what: str) -> None:
    """Raise a :class:`UserError` unless file ``path`` can be written (its folder created): it is not a
    folder, and its folder is writable (:func:`check_output_dir`)."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; pass a file name such as {os.path.join(path, 'results.json')}")
    check_output_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")


def lock_folder(folder: str, what: str, fix: str = "choose another --name") -> int:
    """Claim ``folder`` (which must exist) for this process: an exclusive ``flock`` on
    ``<folder>/.lock`` (holding the owner's pid), kept until :func:`unlock` or the process ends
    (the OS releases it when a process dies, so a killed run never blocks the next).
    Another live holder is a :class:`UserError` naming its pid and ending with ``fix``. Returns the
    lock's descriptor."""
    path = os.path.join(folder, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{what} {folder} is in use by another process (pid {owner}); wait for it to finish, "
                        f"or {fix}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


def unlock(fd: Optional[int]) -> None:
    """Release a lock of :func:`lock_folder` (None: nothing to do)."""
    if fd is not None:
        os.close(fd)
