"""check_adamw_update predicts AdamW's next update (every implementation), changes nothing, and flags blow-ups."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from prismatic.training.update_guard import UpdateCheck, check_adamw_update

IMPLEMENTATIONS: dict[str, dict[str, Any]] = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}
try:  # fused AdamW runs on CPU in recent torch
    _p = nn.Parameter(torch.zeros(2))
    _p.grad = torch.ones(2)
    torch.optim.AdamW([_p], fused=True).step()
    IMPLEMENTATIONS["fused"] = {"fused": True}
except RuntimeError:
    pass


def model_and_optimizer(impl: str) -> tuple[nn.Module, torch.optim.AdamW]:
    """Three parameter groups with different lr / weight decay / betas / eps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 5))
    groups = [
        {"params": [model[0].weight], "lr": 1e-2, "weight_decay": 0.1},
        {"params": [model[0].bias, model[2].weight], "lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)},
        {"params": [model[2].bias], "lr": 0.5, "weight_decay": 0.5, "betas": (0.5, 0.9), "eps": 1e-3},
    ]
    return model, torch.optim.AdamW(groups, eps=1e-6, **IMPLEMENTATIONS[impl])


def backward(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    inputs, target = torch.randn(32, 10, generator=gen), torch.randn(32, generator=gen)
    ((model(inputs).sum(-1) - target).pow(2).mean() * (1 + seed)).backward()


def measured(model: nn.Module, optimizer: torch.optim.Optimizer) -> UpdateCheck:
    """The norms a real step produces, on a copy (parameters, gradients and optimizer state)."""
    model2, optimizer2 = copy.deepcopy((model, optimizer))
    for param, param_copy in zip(model.parameters(), model2.parameters(), strict=True):
        param_copy.grad = param.grad.clone()
    before = [p.detach().clone() for p in model2.parameters()]
    optimizer2.step()
    after = [p.detach() for p in model2.parameters()]

    def norm(tensors: list[torch.Tensor]) -> float:
        return float(torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in tensors])))

    return UpdateCheck(norm([a - b for a, b in zip(after, before, strict=True)]), norm(before), norm(after))


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("steps_before", [0, 3])
def test_prediction_matches_a_real_step_and_changes_nothing(impl: str, steps_before: int) -> None:
    model, optimizer = model_and_optimizer(impl)
    for step_index in range(steps_before):
        backward(model, seed=100 + step_index)
        optimizer.step()
    backward(model, seed=7)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(optimizer.state_dict())
    predicted = check_adamw_update(optimizer)
    real = measured(model, optimizer)
    for field in ("update_norm", "param_norm", "new_param_norm"):
        assert getattr(predicted, field) == pytest.approx(getattr(real, field), rel=1e-5), field
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert len(optimizer.state) == (len(params) if steps_before else 0)  # no state created for a first step
    torch.testing.assert_close(optimizer.state_dict(), state, rtol=0, atol=0)


def test_a_huge_learning_rate_or_a_nonfinite_gradient_is_not_acceptable() -> None:
    model, optimizer = model_and_optimizer("for-loop")
    backward(model, seed=1)
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    sane = check_adamw_update(optimizer)
    assert sane.finite and sane.ratio < 0.01 and sane.acceptable(1.0)
    for group in optimizer.param_groups:
        group["lr"] = 1e10
    huge = check_adamw_update(optimizer)
    assert huge.finite and huge.ratio > 1e8 and not huge.acceptable(1.0) and huge.acceptable(None)
    assert huge.update_norm == pytest.approx(measured(model, optimizer).update_norm, rel=1e-5)
    for bad in (float("nan"), float("inf")):
        next(model.parameters()).grad[0, 0] = bad
        check = check_adamw_update(optimizer)
        assert not check.finite and not check.acceptable(None)


def test_parameters_without_gradients_are_ignored() -> None:
    frozen = nn.Parameter(torch.full((4,), 1e6))
    live = nn.Parameter(torch.ones(4))
    live.grad = torch.ones(4)
    optimizer = torch.optim.AdamW([frozen, live], lr=0.1, weight_decay=0.0)
    check = check_adamw_update(optimizer)
    assert check.param_norm == pytest.approx(2.0) and check.update_norm == pytest.approx(0.2, rel=1e-5)
    assert frozen not in optimizer.state
    assert check_adamw_update(torch.optim.AdamW([frozen], lr=0.1)) == UpdateCheck(0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.AdamW(ps, amsgrad=True),
        lambda ps: torch.optim.AdamW(ps, maximize=True),
        lambda ps: torch.optim.Adam(ps, weight_decay=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
    ],
)
def test_unmodelled_optimizers_are_refused(make: Any) -> None:
    param = nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    with pytest.raises(ValueError):
        check_adamw_update(make([param]))


def test_ratio_edge_cases() -> None:
    assert UpdateCheck(0.0, 0.0, 0.0).ratio == 0.0
    assert UpdateCheck(1.0, 0.0, 1.0).ratio == float("inf")
    assert UpdateCheck(1.0, 4.0, 4.1).ratio == 0.25 and UpdateCheck(1.0, 4.0, 4.1).acceptable(0.25)
