"""Load the tokenizer of a config bundle or checkpoint folder, offline.

With transformers 5, `AutoTokenizer.from_pretrained` fails on VLA-Adapter's real bundle (its `auto_map` names custom
code that is not shipped, and the mirror lacks `tokenizer.json`). The class named in `tokenizer_config.json`
(`Qwen2Tokenizer`) loads it fine, from `tokenizer.json` or from `vocab.json` + `merges.txt`, so we use that class.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from transformers import PreTrainedTokenizerBase

# The files of a config bundle (`--config_file_path`); every checkpoint folder carries them too.
BUNDLE_FILES = (
    "config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """Tokenizer of `folder` through the class its `tokenizer_config.json` names; never touches the network."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"No tokenizer_config.json in {folder}: --config_file_path must point at a config bundle (e.g. "
            "pretrained_models/configs, made by `python vla-scripts/make_config_bundle.py`) or a checkpoint folder"
        )
    class_name = json.loads(config_path.read_text(encoding="utf-8")).get("tokenizer_class") or "Qwen2Tokenizer"
    candidates = [class_name, class_name.removesuffix("Fast"), f"{class_name.removesuffix('Fast')}Fast"]
    tokenizer_cls = next((getattr(transformers, n) for n in candidates if hasattr(transformers, n)), None)
    if tokenizer_cls is None:
        raise ValueError(f"{config_path} names tokenizer_class {class_name!r}, which transformers does not provide")
    has_files = (folder / "tokenizer.json").is_file() or all(
        (folder / n).is_file() for n in ("vocab.json", "merges.txt")
    )
    if not has_files:
        raise FileNotFoundError(f"{folder} has neither tokenizer.json nor vocab.json + merges.txt")
    tokenizer = tokenizer_cls.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
