"""One real CPU forward + backward of the full-size VLA-Adapter-Pro policy with LoRA r=64 at batch 1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prismatic.assets.config_bundle import write_config_bundle
from prismatic.models.batch import policy_batch
from prismatic.models.image_processing import PrismaticImageProcessor
from prismatic.models.lora import LoRASettings, apply_lora
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.presets import FULL, preset_from_openvla_config
from prismatic.models.prompting import vla_prompt_ids
from prismatic.models.tokenizer import load_tokenizer
from prismatic.models.vlm import PrismaticVLM
from prismatic.vla.constants import LIBERO_CONSTANTS

from conftest import FIXTURES_DIR, REAL_CONFIG_BUNDLE


@pytest.mark.slow
def test_full_size_forward_backward_with_lora(tmp_path: Path) -> None:
    # The real architecture and tokenizer from VLA-Adapter's config bundle when available, else our identical copy.
    if REAL_CONFIG_BUNDLE.exists():
        bundle = REAL_CONFIG_BUNDLE
        preset = preset_from_openvla_config(json.loads((bundle / "config.json").read_text()))
    else:
        bundle, preset = write_config_bundle(tmp_path / "configs", FULL), FULL
    assert preset == FULL
    observation_file = FIXTURES_DIR / "libero_spatial_observation.npz"
    if observation_file.exists():
        obs = np.load(observation_file)
        images, state = [obs["full_image"], obs["wrist_image"]], obs["state"].astype(np.float32)
        instruction = json.loads(observation_file.with_suffix(".json").read_text())["task_description"]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
        state, instruction = rng.normal(size=8).astype(np.float32), "pick up the black bowl and place it on the plate"

    torch.manual_seed(0)
    start = time.perf_counter()
    policy = VLAAdapterPolicy(apply_lora(PrismaticVLM(preset, num_images=2), LoRASettings(rank=64)), LIBERO_CONSTANTS)
    tokenizer = load_tokenizer(bundle)
    pixel_values = PrismaticImageProcessor()(images).unsqueeze(0)
    batch = policy_batch(
        [vla_prompt_ids(tokenizer, instruction)],
        tokenizer.pad_token_id,
        pixel_values,
        proprio=torch.from_numpy(state)[None],
    )
    if instruction == "pick up the black bowl between the plate and the ramekin and place it on the plate":
        assert batch.input_ids.shape[1] == 56 + 64  # the reference prompt + 64 action queries
    built = time.perf_counter()
    out = policy(batch)
    target = torch.zeros_like(out.actions)
    loss = torch.nn.functional.l1_loss(out.actions, target)
    loss.backward()
    done = time.perf_counter()

    assert out.actions.shape == (1, 8, 7)
    assert len(out.vlm.hidden_states) == 25
    assert out.vlm.hidden_states[-1].shape == (1, 1 + 512 + batch.input_ids.shape[1] - 1, 896)
    assert torch.isfinite(loss)
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora_b)
    assert any(p.grad.abs().sum() > 0 for p in lora_b)
    head_grads = [p.grad for p in policy.action_head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    print(f"full-size build {built - start:.1f}s, forward+backward {done - built:.1f}s")
