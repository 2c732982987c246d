"""Atomic file and folder writes: readers never see a half-written file, and nothing saved is lost on a crash.

Everything is first written next to its destination (same filesystem) and then moved into place with
`os.replace`, which is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """`write(handle)` into a temporary sibling file, then an atomic rename to `path` (for writers that stream, such
    as `numpy.savez`, so that a large file need not be built in memory first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the final file gets the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling file and an atomic rename."""
    return atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staged_directory(final_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `final_dir`; on success move it to `final_dir` atomically.

    If the body raises, the temporary folder is removed and `final_dir` is untouched. With `overwrite`, an
    existing `final_dir` is replaced only after the new content is complete; without it, an existing
    `final_dir` is an error raised before any work starts.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not overwrite:
        raise FileExistsError(f"{final_dir} already exists; remove it or pass overwrite=True to replace it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    os.chmod(tmp_dir, 0o777 & ~_umask())  # mkdtemp creates 0700; the final folder gets the usual permissions
    try:
        yield tmp_dir
        usual = 0o666 & ~_umask()
        for file in tmp_dir.rglob("*"):  # safetensors writes its files 0600: give every file the usual permissions
            if file.is_file() and not file.is_symlink():
                os.chmod(file, usual)
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, old)
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, final_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
