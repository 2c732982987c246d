"""Helpers shared by the thin entry points in `vla-scripts/`."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

# Errors that mean "the user's input is wrong": shown as one clear line instead of a traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError)


def exit_on_user_error(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn input errors raised by `fn` into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from err

    return wrapper
