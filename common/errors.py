"""User-facing errors: one clear message, exit code 2, no traceback.

Raise :class:`UserError` for anything a user can cause (missing paths, bad files,
bad flags, mismatched checkpoints). Programming errors keep raising normally.
Entry scripts wrap their ``main`` with :func:`run_main`.
"""
from __future__ import annotations

import sys
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """An error caused by the user's input; its message says what, where and how to fix."""


def user_message(exc: UserError) -> str:
    """The user's message, also for a UserError re-raised by a DataLoader worker (which
    prepends the worker's traceback to the text)."""
    text = str(exc)
    marker = "UserError: "
    if "Original Traceback" in text and marker in text:
        return text[text.rindex(marker) + len(marker):].strip()
    return text


def run_main(main: Callable[[], object]) -> None:
    """Run ``main`` and turn a :class:`UserError` into ``error: <message>`` and exit 2."""
    try:
        main()
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
