"""Opt-in approximations that make a CRaFT step cheaper, each keeping the method's meaning.

* `retention_subset`: the retention loss and its gradient from a uniformly random subset of a micro-batch (in their
  own, smaller forward). L_ret is a mean over samples, so the subset's mean is an unbiased estimate of the
  micro-batch's L_ret and its gradient an unbiased estimate of g_ret; the dual update sees the same expectation,
  with more variance. Cost: about 1 + 1.33 f baseline steps instead of ~1.8.
* `AnchorFeatureCache`: f~ = features of the frozen initial model, a pure function of the sample. When a sample's
  inputs are the same every time it is drawn (no image augmentation), f~ computed once is f~ forever, so later
  epochs skip the anchor forward. Exact, not an approximation; it only spends host memory.
* `constraint_is_slack`: while lambda = 0 and L_ret sits well inside the budget, the constraint L_ret <= epsilon is
  inactive, and the constrained problem is locally the unconstrained one (KKT: an inactive constraint has a zero
  multiplier and adds nothing to the stationarity condition). The retention gradient then only feeds the projection,
  so such a step drops it: one backward instead of two. L_ret is still measured every step (from the shared forward),
  so the dual update, the logs and the decision for the next step stay exact; as soon as L_ret nears the budget
  (or lambda > 0) every step is exact CRaFT again. What changes is the path inside the budget: exact CRaFT projects
  on every step and so usually stays far below epsilon; this mode lets the drift grow towards `margin x epsilon`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import torch


def retention_subset(batch_size: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of max(1, round(fraction x batch_size)) samples drawn uniformly without replacement."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the retention fraction must be in (0, 1] (got {fraction})")
    count = min(batch_size, max(1, round(fraction * batch_size)))
    return torch.randperm(batch_size, generator=generator)[:count].sort().values


def constraint_is_slack(lambda_value: float, last_retention: float | None, budget: float, margin: float) -> bool:
    """Whether a step may skip the retention gradient: margin > 0, lambda = 0 and the previous step's measured L_ret
    at most margin x budget. Decided from values every rank shares (lambda, the all-reduced L_ret), so all ranks skip
    together; with no previous measurement (first step, or a checkpoint without one) the step is exact."""
    if margin <= 0.0 or lambda_value != 0.0 or last_retention is None or not math.isfinite(last_retention):
        return False
    return last_retention <= margin * budget


class AnchorFeatureCache:
    """f~ by sample key, on the host (a few KB per sample at full size), filled as samples are first seen."""

    def __init__(self) -> None:
        self._features: dict[Hashable, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._features)

    @property
    def nbytes(self) -> int:
        return sum(row.numel() * row.element_size() for row in self._features.values())

    def features(
        self, keys: Sequence[Hashable], compute: Callable[[list[int]], torch.Tensor], device: torch.device | str
    ) -> torch.Tensor:
        """(len(keys), F) anchor features on `device`: cached rows as stored, the others from `compute(rows)` (called
        once, with the positions of the keys not yet cached, and returning their features in that order)."""
        missing = [row for row, key in enumerate(keys) if key not in self._features]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            computed = compute(missing).detach()
            for row, values in zip(missing, computed, strict=True):
                self._features[keys[row]] = values.to("cpu", copy=True)
        stacked = torch.stack([self._features[key] for key in keys])
        return stacked.to(device, non_blocking=True)

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else math.nan
