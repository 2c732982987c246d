"""The GPU memory model (`bench_memory.py`): its JSON, its accounting against a real CPU step, and the full-size
comparison with VLA-Adapter's recipe."""

from __future__ import annotations

import json

from prismatic.models.presets import FULL
from prismatic.training.memory_model import TrainingRecipe, step_memory

from conftest import REPO_ROOT, run_python

CATEGORIES = (
    "frozen_weights_bf16_bytes",
    "frozen_weights_fp32_bytes",
    "trainable_weights_bytes",
    "gradients_bytes",
    "optimizer_state_bytes",
    "craft_extras_bytes",
    "activations_bytes",
    "logits_bytes",
)


def test_bench_memory_json_and_its_check_against_a_real_cpu_step() -> None:
    script = REPO_ROOT / "vla-scripts" / "benchmarks" / "bench_memory.py"
    proc = run_python(
        [str(script), "--config", "tiny", "--batch_size", "2", "--lora_rank", "8", "--measure_cpu", "True"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    for side in ("ours", "reference"):
        assert all(key.endswith("_bytes") for key in report[side])
        assert report[side]["total_bytes"] == sum(report[side][key] for key in CATEGORIES)
    assert report["measured_cpu_matches"] == dict.fromkeys(
        [
            "frozen_weights_bf16_bytes",
            "frozen_weights_fp32_bytes",
            "trainable_weights_bytes",
            "gradients_bytes",
            "optimizer_state_bytes",
            "activations",
        ],
        True,
    )
    bad = run_python([str(script), "--config", "huge"])
    assert bad.returncode != 0 and "--config must be one of" in bad.stderr


def test_full_size_accounting_ours_against_the_reference_recipe() -> None:
    ours = step_memory(FULL, TrainingRecipe(batch_size=8, lora_rank=64))
    craft = step_memory(FULL, TrainingRecipe(batch_size=8, lora_rank=64, use_craft=True))
    checkpointed = step_memory(FULL, TrainingRecipe(batch_size=8, lora_rank=64, gradient_checkpointing=True))
    reference = step_memory(FULL, TrainingRecipe(batch_size=8, lora_rank=64, reference=True))
    trainable = 270_549_791  # Pro head + LoRA r64 + action queries + proprio projector, fp32
    assert ours["trainable_weights_bytes"] == ours["gradients_bytes"] == 4 * trainable
    assert ours["optimizer_state_bytes"] == 8 * trainable
    assert 2.3 * 2**30 < ours["frozen_weights_bf16_bytes"] < 2.4 * 2**30  # ~1.25 B frozen weights at 2 bytes
    assert reference["frozen_weights_fp32_bytes"] == 0 and reference["trainable_weights_bytes"] % 2 == 0
    assert reference["logits_bytes"] == 8 * 632 * 151_936 * 8 and ours["logits_bytes"] == 0
    assert craft["craft_extras_bytes"] > 2 * 4 * trainable  # two fp32 accumulators + the anchor's hidden states
    assert checkpointed["activations_bytes"] < ours["activations_bytes"] / 4
    assert ours["total_bytes"] < reference["total_bytes"]
