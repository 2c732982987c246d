"""LoRA: explicit targets, peft settings, trainable set, and adapters-disabled == base model exactly."""

from __future__ import annotations

import torch
from torch import nn

from prismatic.models.batch import PolicyBatch, policy_batch
from prismatic.models.lora import LoRASettings, apply_lora, lora_target_modules
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.presets import TINY
from prismatic.models.vlm import PrismaticVLM
from prismatic.vla.constants import ACTION_QUERY_TOKEN_ID, LIBERO_CONSTANTS


def _batch() -> PolicyBatch:
    generator = torch.Generator().manual_seed(0)
    return policy_batch(
        [[3, 4, 5] + [ACTION_QUERY_TOKEN_ID] * 64, [3, 9, 9] + [ACTION_QUERY_TOKEN_ID] * 64],
        0,
        torch.randn(2, 6, 224, 224, generator=generator),
        proprio=torch.randn(2, 8, generator=generator),
    )


def test_target_list_is_explicit_and_excludes_unused_layers() -> None:
    vlm = PrismaticVLM(TINY)
    targets = lora_target_modules(vlm)
    modules = dict(vlm.named_modules())
    assert all(isinstance(modules[t], nn.Linear) for t in targets)
    assert len(targets) == len(set(targets))
    llm = [t for t in targets if t.startswith("language_model.")]
    assert len(llm) == 7 * TINY.llm.num_hidden_layers
    last = TINY.dino.depth - 1
    assert "vision_backbone.featurizer.blocks.0.attn.qkv" in targets
    assert f"vision_backbone.featurizer.blocks.{last - 1}.mlp.fc2" in targets
    assert not any(f"blocks.{last}." in t for t in targets)  # the unused last block
    assert {"projector.fc1", "projector.fc2", "projector.fc3"} <= set(targets)
    assert not any("lm_head" in t or "patch_embed" in t or "attn_pool" in t for t in targets)


def test_settings_and_trainable_set() -> None:
    torch.manual_seed(0)
    vlm = apply_lora(PrismaticVLM(TINY), LoRASettings(rank=8, dropout=0.1))
    config = vlm.peft_config["default"]
    assert config.r == 8 and config.lora_alpha == 16 and config.lora_dropout == 0.1
    assert config.init_lora_weights == "gaussian"
    trainable = [n for n, p in vlm.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "action_queries.modules_to_save" in n for n in trainable)
    assert any("action_queries.modules_to_save" in n for n in trainable)
    assert all(torch.count_nonzero(p) == 0 for n, p in vlm.named_parameters() if "lora_B" in n)


def test_disabling_adapters_gives_the_base_model_exactly() -> None:
    torch.manual_seed(0)
    base = PrismaticVLM(TINY, num_images=1).eval()
    reference = VLAAdapterPolicy(base, LIBERO_CONSTANTS).eval()
    with torch.no_grad():
        expected = reference.vlm(**_batch().vlm_inputs()).hidden_states
    lora = apply_lora(base, LoRASettings(rank=4))
    with torch.no_grad():  # "train": every adapter and the action queries move away from their start
        for param in lora.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    inputs = _batch().vlm_inputs()
    with torch.no_grad():
        adapted = lora(**inputs).hidden_states
        with lora.disable_adapter():
            disabled = lora(**inputs).hidden_states
    assert not torch.allclose(adapted[-1], expected[-1])
    for disabled_hidden, expected_hidden in zip(disabled, expected, strict=True):
        torch.testing.assert_close(disabled_hidden, expected_hidden, rtol=0, atol=0)


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """DDP needs no `find_unused_parameters`: nothing trainable is left out of the graph."""
    torch.manual_seed(0)
    policy = VLAAdapterPolicy(apply_lora(PrismaticVLM(TINY), LoRASettings(rank=4)), LIBERO_CONSTANTS).train()
    policy(_batch()).actions.abs().mean().backward()
    missing = [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
