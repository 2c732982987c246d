"""CRaFTStep on toy models: how the gradients combine, accumulation, resume, non-finite L_ret, measure-only runs."""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Sequence

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from craft import CRaFTConfig, CRaFTStep, RetentionResult, TokenMasks, extract_features, retention_loss

SEQ_LEN = 5
DIM = 4
MicroBatch = tuple[torch.Tensor, torch.Tensor, bool]  # tokens, action targets, poison the features with NaN


class ToyPolicy(nn.Module):
    """Embedding + two layers reached by both losses; a head (on the last token) reached only by the action loss."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, DIM)
        self.layers = nn.ModuleList([nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)])
        self.head = nn.Linear(DIM, 2)

    def forward(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        hidden = [self.embed(tokens)]
        for layer in self.layers:
            hidden.append(torch.tanh(layer(hidden[-1])))
        return hidden, self.head(hidden[-1][:, -1])


def _masks(batch: int) -> TokenMasks:
    """Tokens 0-1 vision, 2-3 prompt, 4 the action query."""
    positions = torch.arange(SEQ_LEN).expand(batch, SEQ_LEN)
    return TokenMasks(vision=positions < 2, prompt=(positions >= 2) & (positions < 4), action_query=positions == 4)


def _models(seed: int = 0) -> tuple[ToyPolicy, ToyPolicy]:
    """(model, frozen anchor): the model starts away from the anchor so that L_ret and g_ret are not zero."""
    torch.manual_seed(seed)
    anchor = ToyPolicy().double().requires_grad_(False)
    model = copy.deepcopy(anchor).requires_grad_(True)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return model, anchor


def _batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(size, SEQ_LEN, 3, generator=generator, dtype=torch.float64)
    return tokens, torch.randn(size, 2, generator=generator, dtype=torch.float64)


def _losses(
    model: ToyPolicy, anchor: ToyPolicy, micro_batch: MicroBatch, config: CRaFTConfig
) -> tuple[torch.Tensor, RetentionResult]:
    """Mean action loss and L_ret of one micro-batch, as a training loop would compute them."""
    tokens, targets, poison = micro_batch
    kwargs = {
        "anchor_type": config.anchor_type,
        "anchor_layer_idx": config.anchor_layer_idx,
        "cr_token_mode": config.cr_token_mode,
    }
    hidden, actions = model(tokens)
    with torch.no_grad():
        anchor_features = extract_features(anchor(tokens)[0], _masks(len(tokens)), **kwargs)
    features = extract_features(hidden, _masks(len(tokens)), **kwargs)
    if poison:
        features = features * math.nan
    return F.mse_loss(actions, targets), retention_loss(features, anchor_features)


def _reference_grads(
    model: ToyPolicy, anchor: ToyPolicy, micro_batches: Sequence[MicroBatch], config: CRaFTConfig, lam: float
) -> list[torch.Tensor | None]:
    """The CRaFT update written out tensor by tensor, independently of the vectorised implementation."""
    params = list(model.parameters())
    act = [torch.zeros_like(p) for p in params]
    ret = [torch.zeros_like(p) for p in params]
    has_act, has_ret, finite_count = [False] * len(params), [False] * len(params), 0
    for micro_batch in micro_batches:
        act_loss, retention = _losses(model, anchor, micro_batch, config)
        for index, grad in enumerate(torch.autograd.grad(act_loss, params, retain_graph=True, allow_unused=True)):
            if grad is not None:
                act[index] += grad
                has_act[index] = True
        if torch.isfinite(retention.loss):
            finite_count += 1
            for index, grad in enumerate(torch.autograd.grad(retention.loss, params, allow_unused=True)):
                if grad is not None:
                    ret[index] += grad
                    has_ret[index] = True
    expected: list[torch.Tensor | None] = []
    for a_sum, r_sum, a_seen, r_seen in zip(act, ret, has_act, has_ret, strict=True):
        act_grad, ret_grad = a_sum / len(micro_batches), r_sum / max(finite_count, 1)
        dot = float((act_grad * ret_grad).sum())
        if a_seen and r_seen and config.enable_projection and dot < 0:
            act_grad = act_grad - dot / (float((ret_grad * ret_grad).sum()) + config.projection_delta) * ret_grad
        expected.append(None if not (a_seen or r_seen) else act_grad + lam * ret_grad)
    return expected


def _assert_grads(params: Sequence[torch.Tensor], expected: Sequence[torch.Tensor | None]) -> None:
    for index, (param, want) in enumerate(zip(params, expected, strict=True)):
        if want is None:
            assert param.grad is None, f"parameter {index}"
        else:
            assert param.grad is not None, f"parameter {index}"
            torch.testing.assert_close(param.grad, want, msg=lambda m, index=index: f"parameter {index}: {m}")


# ----------------------------------------------------------------------------------------------------------------------
# Combination rule on hand-computed gradients


def _hand_params() -> tuple[torch.Tensor, ...]:
    """act_only: action only, shared: both (conflicting), ret_only: retention only, unused: neither."""
    act_only = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    shared = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ret_only = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    unused = torch.tensor([7.0], dtype=torch.float64, requires_grad=True)
    return act_only, shared, ret_only, unused


def _hand_losses(
    act_only: torch.Tensor, shared: torch.Tensor, ret_only: torch.Tensor
) -> tuple[torch.Tensor, RetentionResult]:
    """g_act = (x, y) on (act_only, shared); g_ret = (z, w) on (shared, ret_only) with x = [2, 3], y = [1, 0],
    z = [-1, 1], w = [0.5]."""
    act_loss = (act_only * torch.tensor([2.0, 3.0], dtype=torch.float64)).sum() + shared[0]
    ret = (shared * torch.tensor([-1.0, 1.0], dtype=torch.float64)).sum() + 0.5 * ret_only.sum()  # 1 + 1.5 = 2.5
    return act_loss, RetentionResult(loss=ret, nonfinite=~torch.isfinite(ret.detach()))


def test_combination_by_hand_uses_lambda_before_the_update() -> None:
    act_only, shared, ret_only, unused = _hand_params()
    unused.grad = torch.ones(1, dtype=torch.float64)  # stale: must become None
    act_only.grad = torch.full((2,), 100.0, dtype=torch.float64)  # stale: must be overwritten, not added to
    step = CRaFTStep(
        [act_only, shared, ret_only, unused], CRaFTConfig(initial_lambda=0.5, dual_lr=1.0, retention_budget=0.1)
    )
    assert step.accumulate(*_hand_losses(act_only, shared, ret_only)) is True
    stats = step.finish()

    # shared: <y, z> = -1 < 0, ||z||^2 = 2 -> y' = y + z / 2 = [0.5, 0.5]; g_shared = y' + 0.5 * z = [0, 1].
    torch.testing.assert_close(act_only.grad, torch.tensor([2.0, 3.0], dtype=torch.float64), rtol=0, atol=0)
    # atol: fp32 buffers
    torch.testing.assert_close(shared.grad, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-7)
    torch.testing.assert_close(ret_only.grad, torch.tensor([0.25], dtype=torch.float64), rtol=0, atol=0)
    assert unused.grad is None
    assert (stats.lambda_before, stats.num_conflicting, stats.num_both, stats.conflict_ratio) == (0.5, 1, 1, 1.0)
    assert stats.lambda_after == pytest.approx(0.5 + 1.0 * (2.5 - 0.1))
    assert step.lambda_value == 0.5  # proposed, not applied until the optimizer step is taken
    step.commit()
    assert step.lambda_value == stats.lambda_after
    step.commit()  # once only
    assert step.lambda_value == stats.lambda_after
    assert stats.retention_loss == 2.5 and stats.retention_nonfinite == 0.0 and stats.num_microbatches == 1
    assert stats.act_grad_norm == pytest.approx(math.sqrt(4 + 9 + 1))
    assert stats.ret_grad_norm == pytest.approx(math.sqrt(1 + 1 + 0.25))


def test_without_projection_the_true_conflict_ratio_is_still_reported() -> None:
    act_only, shared, ret_only, unused = _hand_params()
    config = CRaFTConfig(enable_projection=False, enable_dual=False, fixed_lambda=0.1)
    step = CRaFTStep([act_only, shared, ret_only, unused], config)
    step.accumulate(*_hand_losses(act_only, shared, ret_only))
    stats = step.finish()
    torch.testing.assert_close(shared.grad, torch.tensor([1.0 - 0.1, 0.1], dtype=torch.float64))
    torch.testing.assert_close(ret_only.grad, torch.tensor([0.05], dtype=torch.float64))
    assert (stats.conflict_ratio, stats.lambda_before, stats.lambda_after) == (1.0, 0.1, 0.1)


def test_measure_only_writes_g_act_and_leaves_lambda_alone() -> None:
    act_only, shared, ret_only, unused = _hand_params()
    step = CRaFTStep(
        [act_only, shared, ret_only, unused], CRaFTConfig(initial_lambda=0.5, dual_lr=1.0), measure_only=True
    )
    step.accumulate(*_hand_losses(act_only, shared, ret_only))
    stats = step.finish()
    torch.testing.assert_close(act_only.grad, torch.tensor([2.0, 3.0], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(shared.grad, torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=0, atol=0)
    assert ret_only.grad is None and unused.grad is None
    step.commit()
    assert (stats.lambda_before, stats.lambda_after, step.lambda_value) == (0.5, 0.5, 0.5)
    assert (stats.conflict_ratio, stats.retention_loss) == (1.0, 2.5)


def test_step_api_errors() -> None:
    act_only, shared, ret_only, _ = _hand_params()
    step = CRaFTStep([act_only, shared, ret_only, act_only], CRaFTConfig())
    assert step.params == [act_only, shared, ret_only]
    with pytest.raises(RuntimeError, match="before any accumulate"):
        step.finish()
    step.accumulate(*_hand_losses(act_only, shared, ret_only))
    with pytest.raises(RuntimeError, match="finish"):
        step.state_dict()
    with pytest.raises(ValueError, match="require grad"):
        CRaFTStep([torch.zeros(2)], CRaFTConfig())
    with pytest.raises(ValueError, match="retention_budget must be > 0"):
        CRaFTStep([act_only], CRaFTConfig(retention_budget=0.0))


# ----------------------------------------------------------------------------------------------------------------------
# Toy policy: accumulation, resume, non-finite retention

TOY_CONFIG = CRaFTConfig(retention_budget=0.01, dual_lr=5.0, initial_lambda=0.2, cr_token_mode="vision_plus_prompt")


def _train(micro_batches_per_step: int, steps: int) -> tuple[list, ToyPolicy, CRaFTStep]:
    """SGD steps on 8-sample batches split into micro-batches; returns (stats, model, step)."""
    model, anchor = _models()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = CRaFTStep(model.parameters(), TOY_CONFIG, accumulate_dtype=torch.float64)
    history = []
    for index in range(steps):
        tokens, targets = _batch(index)
        chunks = zip(tokens.chunk(micro_batches_per_step), targets.chunk(micro_batches_per_step), strict=True)
        micro_batches = [(x, y, False) for x, y in chunks]
        expected = _reference_grads(model, anchor, micro_batches, TOY_CONFIG, step.lambda_value)
        for micro_batch in micro_batches:
            step.accumulate(*_losses(model, anchor, micro_batch, TOY_CONFIG))
        history.append(step.finish())
        _assert_grads(list(model.parameters()), expected)
        optimizer.step()
        step.commit()
        optimizer.zero_grad(set_to_none=True)
    return history, model, step


def test_accumulation_over_micro_batches_equals_one_big_batch() -> None:
    accumulated, model_k, step_k = _train(micro_batches_per_step=4, steps=3)
    whole, model_1, _ = _train(micro_batches_per_step=1, steps=3)
    assert sum(s.num_conflicting for s in whole) > 0, "the toy must exercise the projection"
    assert [s.num_microbatches for s in accumulated] == [4, 4, 4]
    for k_stats, one_stats in zip(accumulated, whole, strict=True):
        assert (k_stats.num_conflicting, k_stats.num_both) == (one_stats.num_conflicting, one_stats.num_both)
        assert k_stats.retention_loss == pytest.approx(one_stats.retention_loss, rel=1e-6)
        assert k_stats.lambda_after == pytest.approx(one_stats.lambda_after, rel=1e-6)
    for p_k, p_1 in zip(model_k.parameters(), model_1.parameters(), strict=True):
        torch.testing.assert_close(p_k, p_1, rtol=1e-6, atol=1e-8)
    assert step_k.lambda_value > 0.2, "lambda must have moved for the comparison to mean something"


def _run_with_adamw(steps: range, state: bytes | None) -> tuple[ToyPolicy, CRaFTStep, bytes]:
    """AdamW + CRaFT over the given step indices, optionally resumed from a checkpoint; returns a new checkpoint."""
    model, anchor = _models()
    if state is not None:
        torch.manual_seed(123)  # fresh objects start elsewhere; everything must come from the checkpoint
        model = ToyPolicy().double()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    step = CRaFTStep(model.parameters(), TOY_CONFIG)
    if state is not None:
        checkpoint = torch.load(io.BytesIO(state), weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step.load_state_dict(checkpoint["craft"])
    for index in steps:
        tokens, targets = _batch(index)
        for micro_tokens, micro_targets in zip(tokens.chunk(2), targets.chunk(2), strict=True):
            step.accumulate(*_losses(model, anchor, (micro_tokens, micro_targets, False), TOY_CONFIG))
        step.finish()
        optimizer.step()
        step.commit()
        optimizer.zero_grad(set_to_none=True)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "craft": step.state_dict()}, buffer)
    return model, step, buffer.getvalue()


def test_resume_is_exact() -> None:
    straight, straight_step, _ = _run_with_adamw(range(6), None)
    _, first_half_step, checkpoint = _run_with_adamw(range(3), None)
    resumed, resumed_step, _ = _run_with_adamw(range(3, 6), checkpoint)
    assert first_half_step.lambda_value != straight_step.lambda_value
    assert resumed_step.lambda_value == straight_step.lambda_value
    assert resumed_step.num_steps == straight_step.num_steps == 6
    for p_resumed, p_straight in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(p_resumed, p_straight)


def test_non_finite_retention_is_flagged_and_its_gradient_dropped() -> None:
    model, anchor = _models()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    step = CRaFTStep(model.parameters(), TOY_CONFIG, accumulate_dtype=torch.float64)
    tokens, targets = _batch(0, size=6)
    micro_batches = [(x, y, i == 1) for i, (x, y) in enumerate(zip(tokens.chunk(3), targets.chunk(3), strict=True))]
    expected = _reference_grads(model, anchor, micro_batches, TOY_CONFIG, TOY_CONFIG.initial_lambda)
    finite_losses = []
    for micro_batch in micro_batches:
        act_loss, retention = _losses(model, anchor, micro_batch, TOY_CONFIG)
        if not micro_batch[2]:
            finite_losses.append(retention.loss.item())
        assert step.accumulate(act_loss, retention) is (not micro_batch[2])
    stats = step.finish()

    assert stats.retention_nonfinite == 1.0
    mean_finite = sum(finite_losses) / 2
    assert stats.retention_loss == pytest.approx(mean_finite, rel=1e-6)
    assert stats.lambda_after == pytest.approx(0.2 + 5.0 * (mean_finite - 0.01), rel=1e-6)
    _assert_grads(list(model.parameters()), expected)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_step_where_every_retention_loss_is_non_finite_keeps_lambda() -> None:
    model, anchor = _models()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    step = CRaFTStep(model.parameters(), TOY_CONFIG, accumulate_dtype=torch.float64)
    tokens, targets = _batch(1, size=4)
    micro_batches = [(x, y, True) for x, y in zip(tokens.chunk(2), targets.chunk(2), strict=True)]
    expected = _reference_grads(model, anchor, micro_batches, TOY_CONFIG, TOY_CONFIG.initial_lambda)
    for micro_batch in micro_batches:
        step.accumulate(*_losses(model, anchor, micro_batch, TOY_CONFIG))
    stats = step.finish()
    step.commit()
    assert stats.retention_nonfinite == 1.0 and math.isnan(stats.retention_loss)
    assert stats.lambda_before == stats.lambda_after == step.lambda_value == 0.2
    assert stats.num_both == 0 and stats.conflict_ratio == 0.0
    _assert_grads(list(model.parameters()), expected)  # g_act alone
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_parameters_get_bf16_gradients_from_the_fp32_accumulator() -> None:
    model, anchor = _models()
    model, anchor = model.to(torch.bfloat16), anchor.to(torch.bfloat16)
    step = CRaFTStep(model.parameters(), TOY_CONFIG)
    tokens, targets = _batch(2, size=4)
    step.accumulate(*_losses(model, anchor, (tokens.bfloat16(), targets.bfloat16(), False), TOY_CONFIG))
    stats = step.finish()
    assert math.isfinite(stats.retention_loss) and stats.num_both == 6  # embed, layers: weight + bias
    for param in model.parameters():
        assert param.grad is not None and param.grad.dtype == torch.bfloat16
        assert torch.isfinite(param.grad).all()
