"""The CRaFT optimizer step: what the training loop calls instead of `loss.backward()`.

Per optimizer step with K micro-batches::

    step = CRaFTStep(trainable_params, config)          # once
    for each micro-batch:
        act_loss = ...                                  # mean over the micro-batch's samples, NOT divided by K
        ret = retention_loss(features, anchor_features) # same: the micro-batch's mean, not divided by K
        step.accumulate(act_loss, ret)
    stats = step.finish()                               # writes param.grad, proposes the dual update
    (optional grad clipping) optimizer.step(); step.commit()  # lambda moves only with a step actually taken
    optimizer.zero_grad(set_to_none=True)

Semantics:

- Loss scaling: pass each micro-batch's own (mean) losses; CRaFT averages the gradients itself. g_act is the sum of
  the micro-batch gradients divided by the number of micro-batches; g_ret is divided by the number of micro-batches
  whose L_ret was finite (a non-finite micro-batch contributes neither gradient nor loss to the retention side).
- DDP: `finish(sync=True)` sums, in ONE all-reduce, both gradient sets, the per-parameter flags, the micro-batch
  counts and the retention-loss sums, then divides by the global counts: with K micro-batches on each of W ranks,
  g = sum / (K * W). L_ret for the dual update is the mean over all finite micro-batches of all ranks, so lambda is
  identical on every rank. The parameter list must be in the same order on every rank, and DDP must not reduce these
  gradients itself (use the bare module or `no_sync()`): `torch.autograd.grad` bypasses DDP's hooks by design.
- Update: per tensor, g_i = g~_act_i + lambda_before * g_ret_i, where g~_act is projected on conflicting tensors (if
  enabled); tensors with only g_act keep it, tensors with only g_ret get lambda_before * g_ret, tensors with neither
  get `grad = None`. `.grad` is overwritten, never added to.
- Dual update: `finish` reports lambda <- max(0, lambda + eta * (mean L_ret - epsilon)) (none when every micro-batch
  was non-finite) and `commit` applies it; a caller that skips the optimizer step does not commit, so lambda stays.
- Measure-only (baseline runs): the same diagnostics, but `.grad` = g_act (unprojected) and lambda is untouched.
- Slack steps (`slack_margin > 0`, see `craft.cheap.constraint_is_slack`): when lambda = 0 and the previous step's
  L_ret was at most margin x epsilon, `accumulate` measures L_ret without its backward; `.grad` = g_act, unprojected.

`finish` synchronises with the host once (one transfer of a small vector of totals); `accumulate` reads the
retention loss's non-finite flag once per micro-batch to decide whether to run the retention backward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from craft.cheap import constraint_is_slack
from craft.config import CRaFTConfig
from craft.dual import DualVariable
from craft.gradients import GradientAccumulator
from craft.projection import project_conflicting
from craft.retention import RetentionResult

_RETENTION_LOSS_SUM = "retention_loss_sum"
_RETENTION_NONFINITE = "retention_nonfinite_count"
_RETENTION_MEASURED = "retention_measured_count"


@dataclass(frozen=True)
class CRaFTStepStats:
    """Diagnostics of one optimizer step, as Python numbers for logging (identical on every rank when synced)."""

    retention_loss: float
    """Mean L_ret over the step's finite micro-batches (NaN if none was finite)."""
    retention_nonfinite: float
    """1.0 if any micro-batch's L_ret was NaN/Inf (its retention gradient was dropped), else 0.0."""
    lambda_before: float
    """lambda used in g = g~_act + lambda * g_ret."""
    lambda_after: float
    """lambda after this step's dual update (applied by `CRaFTStep.commit`)."""
    conflict_ratio: float
    """Conflicting tensors / tensors with both gradients (0 when none has both)."""
    num_conflicting: int
    num_both: int
    act_grad_norm: float
    """L2 norm of the averaged g_act before projection."""
    ret_grad_norm: float
    """L2 norm of the averaged g_ret."""
    num_microbatches: int
    """Micro-batches in this step, over all ranks when synced."""
    retention_gradient: bool = True
    """Whether g_ret was computed (False on a slack step of `slack_margin` mode: L_ret measured only)."""


class CRaFTStep:
    """Accumulates both gradients over micro-batches and turns them into `param.grad` once per optimizer step."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        config: CRaFTConfig,
        *,
        measure_only: bool = False,
        accumulate_dtype: torch.dtype = torch.float32,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        self.params = list(dict.fromkeys(params))  # shared parameters once, order kept
        if not self.params:
            raise ValueError("CRaFTStep needs at least one trainable parameter")
        frozen = [i for i, p in enumerate(self.params) if not p.requires_grad]
        if frozen:
            raise ValueError(f"parameters {frozen} do not require grad; pass only the trainable parameters")
        self.config = config
        self.measure_only = measure_only
        self.process_group = process_group
        self.dual = DualVariable.from_config(config)
        self.num_steps = 0
        self._proposed_retention: float | None = None  # the mean L_ret of a finished, not yet committed step
        self.last_retention: float | None = None  # the last finished step's mean L_ret (for the slack decision)
        self._step_is_slack: bool | None = None  # decided at the step's first micro-batch
        self._accumulator = GradientAccumulator(
            self.params,
            scalar_names=(_RETENTION_LOSS_SUM, _RETENTION_NONFINITE, _RETENTION_MEASURED),
            dtype=accumulate_dtype,
        )

    @property
    def lambda_value(self) -> float:
        """The lambda the next `finish` will use."""
        return self.dual.value

    @property
    def slack(self) -> bool:
        """Whether the coming (or current) optimizer step skips the retention gradient (`slack_margin` mode)."""
        if self._step_is_slack is None:
            return not self.measure_only and constraint_is_slack(
                self.dual.value, self.last_retention, self.config.retention_budget, self.config.slack_margin
            )
        return self._step_is_slack

    def accumulate(self, act_loss: torch.Tensor, retention: RetentionResult | Callable[[], RetentionResult]) -> bool:
        """Add one micro-batch: g_act always, g_ret only if L_ret is finite (and the step is not slack). Returns
        whether g_ret was used.

        Both losses are the micro-batch's own losses (not divided by the number of micro-batches). A `RetentionResult`
        comes from the same forward as `act_loss`: the action backward retains the graph so the retention backward
        can reuse it. A callable computes the retention loss in a forward of its own (e.g. on a subset of the
        micro-batch): it is called after the action backward, whose graph is then already freed.
        """
        slack = self._step_is_slack = self.slack
        act_grads = self._grads(act_loss, retain_graph=not callable(retention) and not slack)
        if callable(retention):
            with torch.no_grad() if slack else contextlib.nullcontext():
                retention = retention()
        retention_finite = not bool(retention.nonfinite)  # the one host sync per micro-batch
        if retention_finite:
            ret_grads = None if slack else self._grads(retention.loss, retain_graph=False)
            self._accumulator.add_scalar(_RETENTION_LOSS_SUM, retention.loss)
            self._accumulator.add_scalar(_RETENTION_MEASURED, 1.0)
        else:
            ret_grads = None
            self._accumulator.add_scalar(_RETENTION_NONFINITE, 1.0)
        self._accumulator.add(act_grads, ret_grads)
        return retention_finite

    def finish(self, sync: bool = True) -> CRaFTStepStats:
        """Average (and all-reduce if `sync` under DDP), project, write `param.grad`, propose the dual update, reset."""
        if self._accumulator.num_microbatches == 0:
            raise RuntimeError("finish() called before any accumulate() in this optimizer step")
        acc = self._accumulator
        totals = acc.finalize(sync=sync, group=self.process_group)
        norms = torch.stack([torch.linalg.vector_norm(acc.act_flat), torch.linalg.vector_norm(acc.ret_flat)])
        projection = project_conflicting(
            acc.act_grads,
            acc.ret_grads,
            has_both=totals.has_act & totals.has_ret,
            delta=self.config.projection_delta,
            enabled=self.config.enable_projection and not self.measure_only,
            inplace=True,
        )
        scalars = torch.stack(
            [
                totals.scalars[_RETENTION_LOSS_SUM],
                totals.scalars[_RETENTION_MEASURED],
                totals.scalars[_RETENTION_NONFINITE],
                totals.act_count,
                projection.num_conflicting.to(acc.dtype),
                projection.num_both.to(acc.dtype),
                norms[0],
                norms[1],
            ]
        )
        summary = torch.cat([scalars, totals.has_act.to(acc.dtype), totals.has_ret.to(acc.dtype)]).tolist()
        ret_sum, ret_measured, nonfinite, act_count, num_conflicting, num_both, act_norm, ret_norm = summary[:8]
        num_params = acc.num_params
        has_act = [flag > 0 for flag in summary[8 : 8 + num_params]]
        has_ret = [flag > 0 for flag in summary[8 + num_params : 8 + 2 * num_params]]

        mean_ret = ret_sum / ret_measured if ret_measured > 0 else math.nan
        lambda_before = lambda_after = self.dual.value
        self._proposed_retention = None
        if not self.measure_only and math.isfinite(mean_ret):
            lambda_before, lambda_after = self.dual.propose(mean_ret)
            self._proposed_retention = mean_ret
        self._write_grads(has_act, has_ret, lambda_before)
        acc.reset()
        self.num_steps += 1
        retention_gradient = not self._step_is_slack
        self._step_is_slack = None
        if math.isfinite(mean_ret):
            self.last_retention = mean_ret
        return CRaFTStepStats(
            retention_loss=mean_ret,
            retention_nonfinite=1.0 if nonfinite > 0 else 0.0,
            lambda_before=lambda_before,
            lambda_after=lambda_after,
            conflict_ratio=num_conflicting / num_both if num_both > 0 else 0.0,
            num_conflicting=round(num_conflicting),
            num_both=round(num_both),
            act_grad_norm=act_norm,
            ret_grad_norm=ret_norm,
            num_microbatches=round(act_count),
            retention_gradient=retention_gradient,
        )

    def commit(self) -> None:
        """Apply the dual update the last `finish` proposed (once its optimizer step was taken)."""
        if self._proposed_retention is not None:
            self.dual.update(self._proposed_retention)
            self._proposed_retention = None

    def state_dict(self) -> dict[str, Any]:
        """lambda and the step count; taken between optimizer steps (pending micro-batches cannot be resumed)."""
        if self._accumulator.num_microbatches or self._accumulator.num_retention_microbatches:
            raise RuntimeError("state_dict() in the middle of an optimizer step: call finish() first")
        return {
            "dual": self.dual.state_dict(),
            "num_steps": self.num_steps,
            "last_retention": self.last_retention,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore lambda and the step count (the config comes from the constructor, so flags may change on resume)."""
        self.dual.load_state_dict(state["dual"])
        self.num_steps = int(state["num_steps"])
        last = state.get("last_retention")  # absent in checkpoints written before `slack_margin` existed
        self.last_retention = None if last is None else float(last)

    def _grads(self, loss: torch.Tensor, *, retain_graph: bool) -> Sequence[torch.Tensor | None]:
        """d loss / d params, None for parameters the loss does not reach (all None if it reaches none)."""
        if loss.dim() != 0:
            raise ValueError(f"losses must be scalars, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            return [None] * len(self.params)
        return torch.autograd.grad(loss, self.params, retain_graph=retain_graph, allow_unused=True)

    def _write_grads(self, has_act: list[bool], has_ret: list[bool], lambda_before: float) -> None:
        """param.grad = g~_act + lambda * g_ret (just g_act when measuring only); None where neither exists."""
        acc = self._accumulator
        for param, act, ret, act_present, ret_present in zip(
            self.params, acc.act_grads, acc.ret_grads, has_act, has_ret, strict=True
        ):
            use_ret = ret_present and not self.measure_only
            if not act_present and not use_ret:
                param.grad = None
                continue
            grad = param.grad
            if grad is None or grad.shape != param.shape or grad.dtype != param.dtype or grad.device != param.device:
                grad = torch.empty_like(param, memory_format=torch.contiguous_format)
                param.grad = grad
            if act_present and use_ret:
                torch.add(act, ret, alpha=lambda_before, out=grad)
            elif act_present:
                grad.copy_(act)
            else:
                torch.mul(ret, lambda_before, out=grad)
