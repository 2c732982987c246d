"""Helpers shared by the thin entry points in `vla-scripts/`: command-line parsing and one-line user errors."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import draccus
from draccus.utils import DecodingError

Params = ParamSpec("Params")
Result = TypeVar("Result")
Config = TypeVar("Config")

NONE_SPELLINGS = ("none", "null", "")


class UserInputError(ValueError):
    """Wrong input from the user (a flag, a file, an environment variable): shown as one line, no traceback."""


# Errors that mean "the user's input is wrong": shown as one clear line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError)


def exit_on_user_error(fn: Callable[Params, Result]) -> Callable[Params, Result]:
    """Turn input errors raised by `fn` into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Params.args, **kwargs: Params.kwargs) -> Result:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from err

    return wrapper


def _optional_fields(config_class: type) -> set[str]:
    hints = typing.get_type_hints(config_class)
    optional = set()
    for field in dataclasses.fields(config_class):
        hint = hints[field.name]
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            optional.add(field.name)
    return optional


def _normalise_none(argv: Sequence[str], optional: set[str]) -> list[str]:
    """`--flag None` / `none` / `null` / empty for an Optional flag -> draccus's `null`."""
    out = list(argv)
    for index, arg in enumerate(out):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if name not in optional:
            continue
        if eq and value.strip().lower() in NONE_SPELLINGS:
            out[index] = f"--{name}=null"
        elif not eq and index + 1 < len(out) and out[index + 1].strip().lower() in NONE_SPELLINGS:
            out[index + 1] = "null"
    return out


def check_finite_floats(cfg: Any) -> None:
    """Reject `inf` / `nan` in every float field of a config dataclass (they poison losses and schedules)."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserInputError(f"--{field.name} must be a finite number (got {value})")


def parse_cli(config_class: type[Config], argv: Sequence[str], config_path: str | Path | None = None) -> Config:
    """draccus parsing with the two things users trip over made clear: `None` accepted for Optional flags (as
    `None`, `none` or `null`), and a badly typed value reported as one line naming the flag (not a traceback)."""
    args = _normalise_none(argv, _optional_fields(config_class))
    try:
        cfg = draccus.parse(config_class=config_class, config_path=config_path, args=args)
    except DecodingError as err:
        flag = ".".join(str(k) for k in err.key_path)
        raise UserInputError(f"--{flag}: {' '.join(err.message.split())}") from err
    check_finite_floats(cfg)
    return cfg


def cli_entry(fn: Callable[[Config], Result]) -> Callable[[], Result]:
    """Decorate `main(cfg)` of an entry point: parse `sys.argv` into the type its `cfg` is annotated with (see
    `parse_cli`) and turn user errors into one line and exit status 2."""
    config_class = typing.get_type_hints(fn)["cfg"]

    @exit_on_user_error
    @functools.wraps(fn)
    def wrapper() -> Result:
        return fn(parse_cli(config_class, sys.argv[1:]))

    return wrapper


def flag_values(cfg: Any) -> dict[str, Any]:
    """A parsed config as JSON-ready flag values (paths as strings), e.g. to record what a run was asked for."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(cfg).items()}
