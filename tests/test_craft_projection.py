"""One-sided conflict projection: hand-computed cases and properties over random gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import project_conflicting

DELTA = 1e-8


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_hand_computed_projection_and_ratio() -> None:
    # t0 conflicts: <a, r> = -1, ||r||^2 = 2, so a' = a + r / 2 = [0.5, 0.5] (orthogonal to r).
    # t1 agrees (<a, r> = 3), t2 has a zero g_ret (<a, r> = 0), t3 conflicts but lacks one gradient.
    act = [_t(1.0, 0.0), _t(2.0, 1.0), _t(3.0), _t(1.0)]
    ret = [_t(-1.0, 1.0), _t(1.0, 1.0), _t(0.0), _t(-1.0)]
    has_both = torch.tensor([True, True, True, False])
    result = project_conflicting(act, ret, has_both=has_both, delta=DELTA)

    torch.testing.assert_close(result.act_grads[0], _t(0.5, 0.5), rtol=0, atol=1e-8)
    for index in (1, 2, 3):
        assert torch.equal(result.act_grads[index], act[index])
    torch.testing.assert_close(result.dots, _t(-1.0, 3.0, 0.0, -1.0), rtol=0, atol=0)
    assert result.conflicting.tolist() == [True, False, False, False]
    assert result.num_conflicting.item() == 1 and result.num_both.item() == 3
    assert result.conflict_ratio.item() == pytest.approx(1 / 3)
    assert torch.equal(act[0], _t(1.0, 0.0)), "not in place unless asked"


def test_delta_matters_when_g_ret_is_tiny() -> None:
    # <a, r> = -1e-4, ||r||^2 = 1e-8, coefficient = -1e-4 / (1e-8 + 1e-8) = -5000: a' = 1 - 5000 * 1e-4 = 0.5.
    result = project_conflicting([_t(1.0)], [_t(-1e-4)], delta=1e-8)
    assert result.act_grads[0].item() == pytest.approx(0.5, rel=1e-12)


def test_inplace_projection_writes_into_the_given_tensors() -> None:
    act = [_t(1.0, 0.0)]
    result = project_conflicting(act, [_t(-1.0, 1.0)], inplace=True)
    assert result.act_grads[0] is act[0]
    torch.testing.assert_close(act[0], _t(0.5, 0.5), rtol=0, atol=1e-8)


def test_disabled_projection_reports_the_true_ratio() -> None:
    act = [_t(1.0, 0.0), _t(2.0, 1.0)]
    ret = [_t(-1.0, 1.0), _t(1.0, 1.0)]
    result = project_conflicting(act, ret, enabled=False)
    assert all(torch.equal(a, b) for a, b in zip(result.act_grads, act, strict=True))
    assert result.num_conflicting.item() == 1 and result.num_both.item() == 2


def test_no_tensors_and_bad_inputs() -> None:
    result = project_conflicting([], [])
    assert result.act_grads == [] and result.num_both.item() == 0 and result.conflict_ratio.item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        project_conflicting([_t(1.0, 2.0)], [_t(1.0)])
    with pytest.raises(ValueError, match="delta"):
        project_conflicting([_t(1.0)], [_t(1.0)], delta=0.0)


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_subnormal=False)
small_int = st.integers(min_value=-4, max_value=4).map(float)


@st.composite
def gradient_pairs(draw: st.DrawFn, elements: st.SearchStrategy[float]) -> tuple[list, list, list[bool]]:
    """1-5 tensors of 1-6 elements each: (g_act list, g_ret list, has_both flags)."""
    sizes = draw(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=5))
    act = [_t(*draw(st.lists(elements, min_size=n, max_size=n))) for n in sizes]
    ret = [_t(*draw(st.lists(elements, min_size=n, max_size=n))) for n in sizes]
    has_both = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    return act, ret, has_both


@settings(max_examples=150, deadline=None)
@given(gradient_pairs(finite))
def test_projected_tensors_no_longer_conflict_and_others_are_untouched(pairs: tuple[list, list, list[bool]]) -> None:
    act, ret, has_both = pairs
    originals = [a.clone() for a in act]
    result = project_conflicting(act, ret, has_both=torch.tensor(has_both), delta=DELTA)
    for index, (before, after, ret_grad) in enumerate(zip(originals, result.act_grads, ret, strict=True)):
        if not result.conflicting[index]:
            assert torch.equal(after, before)
            continue
        dot, ret_sq = float(before @ ret_grad), float(ret_grad @ ret_grad)
        # Exact arithmetic leaves dot * delta / (||r||^2 + delta) (delta keeps it from being exactly 0); on top,
        # relative rounding, and an absolute floor for products that underflow into subnormals.
        residual_bound = abs(dot) * DELTA / (ret_sq + DELTA) + 1e-9 * float(before.norm() * ret_grad.norm()) + 1e-300
        assert float(after @ ret_grad) >= -residual_bound
        assert torch.isfinite(after).all()


@settings(max_examples=100, deadline=None)
@given(gradient_pairs(small_int), st.booleans())
def test_counts_are_the_true_ones_with_projection_on_or_off(
    pairs: tuple[list, list, list[bool]], enabled: bool
) -> None:
    act, ret, has_both = pairs
    originals = [a.clone() for a in act]
    # Integer-valued entries make every dot product exact, so the expected sign is unambiguous.
    expected_conflicts = [
        both and sum(x * y for x, y in zip(a.tolist(), r.tolist(), strict=True)) < 0
        for a, r, both in zip(act, ret, has_both, strict=True)
    ]
    result = project_conflicting(act, ret, has_both=torch.tensor(has_both), delta=DELTA, enabled=enabled)
    assert result.conflicting.tolist() == expected_conflicts
    assert result.num_conflicting.item() == sum(expected_conflicts)
    assert result.num_both.item() == sum(has_both)
    if not enabled:
        assert all(torch.equal(a, b) for a, b in zip(result.act_grads, originals, strict=True))


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=1, max_size=6))
def test_zero_retention_gradient_is_guarded_by_delta(values: list[float]) -> None:
    act = _t(*values)
    result = project_conflicting([act], [torch.zeros_like(act)], delta=DELTA)
    assert torch.equal(result.act_grads[0], act)
    assert torch.isfinite(result.dots).all() and result.num_conflicting.item() == 0
    assert not math.isnan(result.conflict_ratio.item())
