"""Atomic writes: a failure never leaves a half-written file or folder, and never loses what was saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prismatic.util.atomic_io import atomic_write_json, atomic_write_text, staged_directory


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "stats.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["stats.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "f.txt", "old")

    class Boom:
        def encode(self, _: str) -> bytes:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_text(target, Boom())  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_staged_directory_moves_into_place_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with staged_directory(final) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "1"

    with pytest.raises(RuntimeError), staged_directory(final, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("crash mid-save")
    assert (final / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    with staged_directory(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


def test_staged_directory_refuses_to_replace_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError), staged_directory(tmp_path / "ckpt"):
        pass


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "f.txt", "x")
        with staged_directory(tmp_path / "d") as tmp:
            (tmp / "a").write_text("1")
            (tmp / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "w.safetensors"))  # safetensors writes 0600
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "sub" / "w.safetensors").stat().st_mode & 0o777 == 0o644
