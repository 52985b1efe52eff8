"""Self-describing, versioned checkpoints: atomic writes, safe loads.

A checkpoint is a plain dict saved with ``torch.save`` and loadable with
``torch.load(weights_only=True)`` (no pickled code is ever executed):
``version``, ``config`` (the flat settings dict of :meth:`helper.config.RunConfig.to_dict`),
``model`` (unwrapped state_dict), ``optimizer``, ``scaler`` (when AMP fp16 is used),
``sampler`` (a stateful batch sampler's state), ``epoch`` (the next epoch to run) and
``progress`` (the running sums of a mid-epoch stop), ``best_metric``, ``rng``
(torch/CUDA/numpy/python states), ``git`` (commit).

The version is :data:`helper.config.CONFIG_VERSION`; :func:`load_checkpoint` migrates an older
checkpoint's config (:func:`helper.config.migrate_config`, where the versions are listed).
:func:`model_from_checkpoint` is the one way to rebuild a model from a checkpoint: its stored
config, migrated and validated, builds the model and the weights load strictly.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import re
import subprocess
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch

from common.fileio import write_bytes_atomic
from common.errors import UserError
from helper.config import CONFIG_VERSION, RunConfig, migrate_config
from models import build_model

CHECKPOINT_VERSION = CONFIG_VERSION
REQUIRED_KEYS = ("version", "config", "model", "epoch")


def git_commit() -> Optional[str]:
    """The commit of the code that runs, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def rng_state() -> Dict[str, Any]:
    """Every RNG state as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file, fsync, then ``os.replace``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue(), fsync=True)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``, on CPU) or raise a clear UserError.

    Its ``config`` is migrated to the current version and validated as a complete config."""
    return _read_checkpoint(path)[0]


def _read_checkpoint(path: str) -> Tuple[Dict[str, Any], RunConfig]:
    """:func:`load_checkpoint`'s dict and the :class:`RunConfig` of its (migrated) config."""
    if os.path.isdir(path):
        raise UserError(_folder_message(path))
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "global" in line.lower()), None)
        if detail is None:
            raise UserError(f"{path} is not a readable checkpoint (not a torch file or corrupted)") from None
        raise UserError(
            f"refusing to load {path}: it carries pickled Python objects that could run code "
            f"({detail[:200]}). Only load checkpoints written by this code; never disable "
            f"weights_only for files from others") from None
    except Exception as exc:  # noqa: BLE001 - a file that is not a torch file can fail in almost any way
        first = re.split(r"(?<=[.!?])\s", str(exc).strip(), maxsplit=1)[0].rstrip(".") or type(exc).__name__
        raise UserError(f"{path} is not a readable checkpoint ({os.path.getsize(path)} bytes): truncated, damaged or "
                        f"not a torch file (torch: {first}). Copy or write it again, or pass another checkpoint") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise UserError(f"{path} is not a checkpoint of this project (expected keys {', '.join(REQUIRED_KEYS)}); "
                        f"a bare state_dict cannot say how to rebuild its model")
    version = state["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path} has an invalid checkpoint version {version!r}; it was not written by this code")
    if version > CHECKPOINT_VERSION:
        raise UserError(f"{path} has checkpoint version {version}; this code reads up to "
                        f"{CHECKPOINT_VERSION}: update the code")
    if not isinstance(state["config"], dict):
        raise UserError(f"{path} has no settings dict under 'config'; it was not written by this code")
    state["config"] = migrate_config(state["config"], version)
    run = RunConfig.from_dict(state["config"], source=f"checkpoint {path}", complete=True)
    if not isinstance(state["model"], dict) or not isinstance(state["epoch"], int):
        raise UserError(f"{path} has no weights dict under 'model' or no epoch number; it is damaged")
    return state, run


def _folder_message(path: str) -> str:
    """The error for a checkpoint path that is a folder (a run folder, usually): the .pth files in it."""
    found = sorted(name for name in os.listdir(path) if name.endswith(".pth"))
    if not found:
        return (f"checkpoint {path} is a folder, not a file: it holds no .pth file; pass a checkpoint file (a run "
                f"folder's best.pth or last.pth)")
    example = os.path.join(path, "best.pth" if "best.pth" in found else found[0])
    return (f"checkpoint {path} is a folder, not a file: pass a .pth file inside it, e.g. {example} (it holds "
            f"{', '.join(found)})")


#: What a checkpoint must hold besides :data:`REQUIRED_KEYS` for ``--resume`` to continue it exactly.
RESUME_KEYS = {"optimizer": dict, "rng": dict, "best_metric": (int, float)}


def check_resumable(state: Dict[str, Any], path: str) -> None:
    """Raise a :class:`UserError` when ``state`` lacks what an exact resume restores."""
    missing = [key for key, kind in RESUME_KEYS.items() if not isinstance(state.get(key), kind)]
    if missing:
        raise UserError(f"{path} cannot be resumed: it lacks {', '.join(missing)} (a training state); evaluate it "
                        f"with test_{state['config']['dataset']}.py, or start a new run with "
                        f"--config <its run folder>/config.json")


def load_model_state(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Strictly load weights; a mismatch is a UserError listing the differing keys."""
    result = model.state_dict()
    missing = sorted(set(result) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(result))
    mismatched = sorted(k for k in set(result) & set(state_dict) if result[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})")
        raise UserError(f"the weights in {path} do not fit the model built from its config ({'; '.join(parts)})")
    model.load_state_dict(state_dict, strict=True)


class CheckpointModel(NamedTuple):
    """What :func:`model_from_checkpoint` returns."""

    run: RunConfig  #: the checkpoint's config (migrated, validated; derived defaults not filled in)
    model: torch.nn.Module  #: built from ``run.model``, weights loaded strictly; on the CPU, in train mode
    state: Dict[str, Any]  #: the checkpoint dict as :func:`load_checkpoint` returns it


def model_from_checkpoint(path: str) -> CheckpointModel:
    """Rebuild the model a checkpoint describes and load its weights strictly.

    Every problem a user can cause (missing or unreadable file, a config that does not
    validate, weights that do not fit the model built from it) is a :class:`UserError`
    naming ``path``. ImageNet weights are never fetched: the weights come from the checkpoint.
    """
    state, run = _read_checkpoint(path)
    model = build_model(run.model.replace(pretrained=False))
    load_model_state(model, state["model"], path)
    return CheckpointModel(run, model, state)

