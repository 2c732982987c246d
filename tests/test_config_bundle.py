"""The offline `pretrained_models/configs` bundle: real Qwen2.5 tokenizer, reference layout, idempotent writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from prismatic.assets.config_bundle import bundle_is_complete, write_config_bundle
from prismatic.assets.qwen_tokenizer_files import qwen25_special_token_ids
from prismatic.models.presets import FULL, TINY
from prismatic.models.prompting import QWEN_SYSTEM_PROMPT, build_vla_prompt, robot_question
from prismatic.models.tokenizer import BUNDLE_FILES, load_tokenizer

from conftest import REAL_CONFIG_BUNDLE, require_fixture

REFERENCE_INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config_bundle(tmp_path_factory.mktemp("bundle") / "configs", FULL)


@pytest.fixture(scope="module")
def tokenizer(full_bundle: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(full_bundle)


def test_bundle_has_every_file_of_the_reference_layout(full_bundle: Path) -> None:
    assert bundle_is_complete(full_bundle)
    assert sorted(p.name for p in full_bundle.iterdir()) == sorted(BUNDLE_FILES)


def test_special_tokens_match_qwen25(tokenizer: PreTrainedTokenizerBase, full_bundle: Path) -> None:
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert tokenizer.vocab_size == 151643
    assert len(tokenizer) == 151643 + 22
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 151643
    assert tokenizer.bos_token is None
    ids = qwen25_special_token_ids()
    assert list(ids.values()) == list(range(151643, 151665))
    for token, token_id in ids.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert json.loads((full_bundle / "added_tokens.json").read_text()) == ids


def test_reference_prompt_is_56_tokens_in_the_qwen_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = build_vla_prompt(REFERENCE_INSTRUCTION)
    ids = tokenizer(prompt).input_ids
    assert len(ids) == 56
    assert ids[:3] == [151644, 8948, 198]  # <|im_start|> system \n
    assert ids[-3:] == [151644, 77091, 198]  # <|im_start|> assistant \n
    messages = [
        {"role": "system", "content": QWEN_SYSTEM_PROMPT},
        {"role": "user", "content": robot_question(REFERENCE_INSTRUCTION)},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt


def test_instruction_is_lower_cased() -> None:
    assert robot_question("Pick Up The BOWL") == "What action should the robot take to pick up the bowl?"


def test_matches_the_real_vla_adapter_bundle(full_bundle: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    real = require_fixture(REAL_CONFIG_BUNDLE)
    ours_cfg = json.loads((full_bundle / "config.json").read_text())
    real_cfg = json.loads((real / "config.json").read_text())
    assert ours_cfg["text_config"] == real_cfg["text_config"]
    for key in (
        "arch_specifier",
        "image_resize_strategy",
        "image_sizes",
        "llm_backbone_id",
        "llm_max_length",
        "timm_model_ids",
        "vision_backbone_id",
        "use_fused_vision_backbone",
        "model_type",
        "auto_map",
    ):
        assert ours_cfg[key] == real_cfg[key], key
    for name in ("preprocessor_config.json", "special_tokens_map.json", "generation_config.json"):
        ours = json.loads((full_bundle / name).read_text())
        theirs = json.loads((real / name).read_text())
        theirs.pop("auto_map", None)
        theirs.pop("transformers_version", None)
        assert ours == theirs, name
    ours_tok = json.loads((full_bundle / "tokenizer_config.json").read_text())
    real_tok = json.loads((real / "tokenizer_config.json").read_text())
    assert ours_tok["added_tokens_decoder"] == real_tok["added_tokens_decoder"]
    for key in (
        "eos_token",
        "pad_token",
        "bos_token",
        "tokenizer_class",
        "model_max_length",
        "additional_special_tokens",
    ):
        assert ours_tok[key] == real_tok[key], key
    # The real bundle's tokenizer (loaded through the class its config names) tokenizes identically.
    real_tokenizer = load_tokenizer(real)
    prompt = build_vla_prompt(REFERENCE_INSTRUCTION)
    assert real_tokenizer(prompt).input_ids == tokenizer(prompt).input_ids


def test_tiny_bundle_records_the_shrunk_architecture(tmp_path: Path) -> None:
    folder = write_config_bundle(tmp_path / "tiny", TINY)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["text_config"]["hidden_size"] == TINY.llm.hidden_size
    assert cfg["text_config"]["num_hidden_layers"] == TINY.llm.num_hidden_layers
    assert cfg["text_config"]["vocab_size"] == 151936
    assert cfg["timm_model_overrides"] == [TINY.dino.overrides, TINY.siglip.overrides]
    assert load_tokenizer(folder)(build_vla_prompt(REFERENCE_INSTRUCTION)).input_ids.__len__() == 56


def test_rewrite_is_idempotent_and_never_clobbers_another_bundle(tmp_path: Path) -> None:
    folder = write_config_bundle(tmp_path / "configs", TINY)
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert write_config_bundle(folder, TINY) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="--overwrite True"):
        write_config_bundle(folder, FULL)
    write_config_bundle(folder, FULL, overwrite=True)
    assert json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"] == 896
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_missing_tokenizer_files_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer"}))
    with pytest.raises(FileNotFoundError, match=r"vocab\.json"):
        load_tokenizer(tmp_path)
