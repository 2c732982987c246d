"""Reading checkpoint files without trusting them: no unpickling, and a sha256 manifest that names damaged files.

Checkpoint folders travel between machines and users, so a `.pt` file is untrusted input: `torch.load` with
`weights_only=False` runs whatever a pickle asks for. Every `.pt` file here is read with `weights_only=True`, which
admits only tensors, numbers, strings and containers of them, so what we save must stay within that (RNG states as
tensors and lists, not numpy objects).

Every folder this project writes ends with `manifest.json` (path, size and sha256 of every file), written last
inside the staging folder; loading checks it first and names the file that changed. Folders without a manifest
(VLA-Adapter's released checkpoints, Prismatic VLM folders) still load; they are simply not verified.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from prismatic.util.atomic_io import atomic_write_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vla-adapter-craft-manifest/1"
_HASH_CHUNK = 8 << 20


class CheckpointFileError(ValueError):
    """A checkpoint file is missing, damaged, altered, or holds more than plain tensors."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_tensor_file(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load` of a plain state dict / tensor container, never executing code from the file.

    A pickle that asks for anything beyond tensors and plain containers is refused before any of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        message = str(err)
        if mmap and "mmap can only be used" in message:  # a legacy (non-zip) file: read it without mapping
            return load_tensor_file(path)
        if "unsupported global" in message.lower():
            reason = "it holds objects other than tensors and plain containers (possibly code), so it was not loaded"
        else:
            reason = "it is truncated or damaged (not a plain tensor file)"
        raise CheckpointFileError(f"cannot read {path}: {reason}; use an intact checkpoint") from err


def load_safetensors_file(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a `.safetensors` file (a format that cannot carry code), with a clear error when damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as err:
        raise CheckpointFileError(
            f"cannot read {path}: it is truncated or damaged ({err}); use an intact copy"
        ) from err


def _listed_files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


def write_manifest(folder: str | Path) -> Path:
    """Record path, size and sha256 of every file under `folder` (call last, inside the staging folder)."""
    folder = Path(folder)
    files = [
        {"path": path.relative_to(folder).as_posix(), "size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in _listed_files(folder)
    ]
    return atomic_write_json(folder / MANIFEST, {"format": MANIFEST_FORMAT, "files": files})


def read_manifest(folder: str | Path) -> dict[str, dict[str, Any]] | None:
    """`{relative path: {size, sha256}}` of a folder's manifest, or None when the folder has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        if content.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown format {content.get('format')!r}")
        return {
            entry["path"]: {"size": int(entry["size"]), "sha256": str(entry["sha256"])} for entry in content["files"]
        }
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointFileError(f"{path} is damaged ({err}); the checkpoint cannot be verified") from err


def verify_manifest(folder: str | Path, only: Iterable[str] | None = None) -> bool:
    """Check every file the manifest lists (or just those in `only`); returns False for a folder without a manifest
    (nothing to verify). Files added later (evaluation results, for instance) are not listed and are ignored.
    """
    folder = Path(folder)
    entries = read_manifest(folder)
    if entries is None:
        return False
    if only is not None:
        wanted = set(only)
        entries = {k: v for k, v in entries.items() if k in wanted}
    for relative, expected in entries.items():
        path = folder / relative
        if not path.is_file():
            top = folder / Path(relative).parts[0]
            if top != path and not top.exists():  # a whole sub-folder (e.g. lora_adapter/) is gone
                path = top
            raise CheckpointFileError(
                f"{path} is missing, but {folder / MANIFEST} lists it: the checkpoint is incomplete; restore the file "
                "or use another checkpoint"
            )
        size = path.stat().st_size
        if size != expected["size"]:
            raise CheckpointFileError(
                f"{path} has {size} bytes, {expected['size']} when saved (truncated or replaced); restore the file "
                "or use another checkpoint"
            )
        if sha256_of(path) != expected["sha256"]:
            raise CheckpointFileError(
                f"{path} does not match its sha256 in {folder / MANIFEST} (damaged or modified after saving); restore "
                "the file or use another checkpoint"
            )
    return True
