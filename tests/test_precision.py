"""The precision policy (`--base_precision`): frozen weights bf16, trainable weights, gradients and AdamW state fp32,
and a bf16-base step that matches the fp32-base step; fused AdamW; the LLM's attention mask dropped when causal
attention alone is equivalent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from prismatic.models.batch import random_batch
from prismatic.models.loaders import load_prismatic_vlm
from prismatic.models.precision import Precision, parameter_bytes_by_dtype, resolve_base_precision
from prismatic.models.vlm import PrismaticVLM, llm_attention_mask
from prismatic.training.checkpointing import RunPaths
from prismatic.training.config import FinetuneConfig
from prismatic.training.distributed import DistContext
from prismatic.training.trainer import GradientStepper, Trainee, build_trainee, compute_gradients

from conftest import tiny_finetune_args

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
# Stated tolerances of a bf16-base step against the fp32-base step (tiny model, 4 samples, CPU bf16 autocast):
LOSS_RTOL = 0.02  # relative difference of the action loss
GRAD_MIN_COSINE = 0.99  # cosine similarity of the whole gradient vector
GRAD_NORM_RTOL = 0.05  # relative difference of its norm


def trainee_for(tmp_path: Path, tiny_assets: tuple[Path, Path], data: Path, **flags: object) -> Trainee:
    cfg = FinetuneConfig(**tiny_finetune_args(tiny_assets, data, tmp_path, **flags))
    return build_trainee(cfg, CPU, RunPaths(tmp_path, "tiny"), {}, None)


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert resolve_base_precision("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_base_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_base_precision("bf16", torch.device("cpu")) == torch.bfloat16
    assert Precision.from_flag("fp32", torch.device("cpu")).autocast_dtype is None  # CPU fp32: no autocast
    assert Precision.from_flag("bf16", torch.device("cpu")).autocast_dtype == torch.bfloat16
    assert Precision.from_flag("fp32", torch.device("cuda", 0)).autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="--base_precision must be auto, bf16 or fp32"):
        resolve_base_precision("fp16", torch.device("cpu"))


def test_bf16_base_with_lora_stores_only_frozen_weights_in_bf16(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    trainee = trainee_for(tmp_path, tiny_assets, tiny_libero, base_precision="bf16", use_craft=True)
    policy = trainee.policy
    for name, param in policy.vlm.named_parameters():
        expected = torch.float32 if param.requires_grad else torch.bfloat16
        assert param.dtype == expected, name
        if ".lora_" in name or "modules_to_save" in name:
            assert param.requires_grad, name  # LoRA matrices and the trained action queries are fp32 masters
        if ".base_layer." in name or "language_model.model.embed_tokens" in name or "original_module" in name:
            assert not param.requires_grad, name  # the LLM, ViT and projector weights LoRA adapts stay frozen
    assert all(p.dtype == torch.float32 for p in policy.action_head.parameters())
    assert all(p.dtype == torch.float32 for p in policy.proprio_projector.parameters())
    assert all(buffer.dtype == torch.float32 for name, buffer in policy.named_buffers() if "inv_freq" in name)
    frozen = parameter_bytes_by_dtype(policy.vlm, trainable=False)
    assert set(frozen) == {"bf16"} and frozen["bf16"] > 0
    assert not trainee.anchor.frozen_copy  # the anchor reads the same bf16 weights, adapters disabled
    assert trainee.optimizer.defaults["fused"] is True

    stepper = stepper_for(trainee)
    grads = compute_gradients(stepper, iter([random_batch(2, generator=torch.Generator().manual_seed(0))]), 1, True)
    assert torch.isfinite(grads.losses).all()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainee.trainable)
    trainee.optimizer.step()
    moments = [state["exp_avg"] for state in trainee.optimizer.state.values()]
    assert moments and all(moment.dtype == torch.float32 for moment in moments)


def test_full_fine_tuning_keeps_fp32_masters_and_a_bf16_anchor(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    trainee = trainee_for(tmp_path, tiny_assets, tiny_libero, base_precision="bf16", use_lora=False, use_craft=True)
    vlm = trainee.policy.vlm
    trained = [p for p in vlm.parameters() if p.requires_grad]
    unused = [p for p in vlm.parameters() if not p.requires_grad]  # the last ViT blocks, never reached
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert unused and all(p.dtype == torch.bfloat16 for p in unused)
    assert trainee.anchor.frozen_copy
    assert {p.dtype for p in trainee.anchor.vlm.parameters()} == {torch.bfloat16}


def stepper_for(trainee: Trainee) -> GradientStepper:
    return GradientStepper(
        model=trainee.model,
        anchor=trainee.anchor,
        craft_step=trainee.craft_step,
        craft_cfg=trainee.craft_step.config if trainee.craft_step is not None else None,
        accum=1,
        seed=0,
        ctx=CPU,
        precision=trainee.precision,
    )


@pytest.mark.parametrize("use_craft", [False, True])
def test_a_bf16_base_step_matches_the_fp32_base_step(
    use_craft: bool, tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    """Same initial weights, same batch: loss within LOSS_RTOL, gradient direction within GRAD_MIN_COSINE and norm
    within GRAD_NORM_RTOL (with CRaFT: the combined, projected gradient, and the same retention loss)."""
    results = {}
    for precision in ("fp32", "bf16"):
        trainee = trainee_for(
            tmp_path / precision, tiny_assets, tiny_libero, base_precision=precision, use_craft=use_craft
        )
        with torch.no_grad():  # LoRA's B starts at zero: move it so that the LoRA path carries gradient both ways
            for param in trainee.trainable:
                param.add_(0.01 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
        batch = random_batch(4, generator=torch.Generator().manual_seed(1))
        grads = compute_gradients(stepper_for(trainee), iter([batch]), 1, use_craft)
        flat = torch.cat([p.grad.flatten() for p in trainee.trainable if p.grad is not None])
        results[precision] = (float(grads.losses[0]), flat, grads.craft_stats)
    (loss32, grad32, stats32), (loss16, grad16, stats16) = results["fp32"], results["bf16"]
    assert loss16 == pytest.approx(loss32, rel=LOSS_RTOL)
    assert float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)) > GRAD_MIN_COSINE
    assert float(grad16.norm()) == pytest.approx(float(grad32.norm()), rel=GRAD_NORM_RTOL)
    if use_craft:
        assert stats16.retention_loss == pytest.approx(stats32.retention_loss, rel=0.1, abs=1e-6)


def test_the_llm_gets_no_mask_when_causal_attention_is_equivalent(tiny_assets: tuple[Path, Path]) -> None:
    """Right padding (or none): no mask, so SDPA may use its flash kernel; the outputs the policy reads (patches,
    prompt, action queries) equal those computed with the explicit mask. Left padding keeps the mask."""
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert llm_attention_mask(right) is None and llm_attention_mask(torch.ones(2, 4, dtype=torch.long)) is None
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert llm_attention_mask(left) is left

    vlm: PrismaticVLM = load_prismatic_vlm(tiny_assets[0], num_images=2).eval()
    batch = random_batch(3, generator=torch.Generator().manual_seed(2))
    batch.input_ids[0, -5:], batch.attention_mask[0, -5:] = 0, 0  # a right-padded row: its queries move left
    batch.query_mask[0] = False
    batch.query_mask[0, -5 - 64 : -5] = True
    captured: list[object] = []
    hook = vlm.language_model.model.register_forward_pre_hook(
        lambda _module, args, kwargs: captured.append(kwargs["attention_mask"]), with_kwargs=True
    )
    with torch.no_grad():
        out = vlm(**batch.vlm_inputs())
        hook.remove()
        sequence, mask = vlm.assemble(
            vlm.encode_images(batch.pixel_values),
            vlm.embed_prompt(batch.input_ids, batch.query_mask),
            batch.attention_mask,
        )
        masked = vlm.language_model.model(
            inputs_embeds=sequence, attention_mask=mask, output_hidden_states=True, use_cache=False
        )
    assert captured == [None]
    real = mask.bool()
    for ours, explicit in zip(out.hidden_states, masked.hidden_states, strict=True):
        torch.testing.assert_close(ours[real], explicit[real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("merged_dtype", ["bf16", "fp32"])
def test_a_bf16_base_run_saves_merged_weights_that_load(
    merged_dtype: str, tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    """`--merge_lora_during_training True` from a bf16-base run: the merged file has the chosen dtype and the policy
    it gives acts like the LoRA checkpoint it came from (up to the bf16 rounding of the base weights)."""
    from safetensors import safe_open

    from prismatic.models.loaders import load_policy
    from prismatic.training.trainer import train

    flags = tiny_finetune_args(
        tiny_assets, tiny_libero, tmp_path, base_precision="bf16", merge_lora_during_training=True
    )
    flags.update(max_steps=2, save_freq=2, merged_dtype=merged_dtype)
    train(FinetuneConfig(**flags))
    checkpoint = tmp_path / "tiny--2_chkpt"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as merged:
        dtypes = {merged.get_slice(key).get_dtype() for key in merged.keys()}  # noqa: SIM118
    assert dtypes == {"BF16" if merged_dtype == "bf16" else "F32"}
    adapter_only = tmp_path / "adapter"
    shutil.copytree(checkpoint, adapter_only)
    (adapter_only / "model.safetensors").unlink()
    (adapter_only / "manifest.json").unlink()  # the copy is no longer what the manifest lists
    batch = random_batch(2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        merged_actions = load_policy(checkpoint).policy(batch).actions
        lora_actions = load_policy(adapter_only).policy(batch).actions
    # the adapter-only folder puts the adapter on the fp32 base file, the trained model had it on the bf16-rounded
    # base: the two differ by that rounding (~1e-3 here) whatever the merged dtype
    torch.testing.assert_close(merged_actions, lora_actions, atol=0.05, rtol=0.05)
