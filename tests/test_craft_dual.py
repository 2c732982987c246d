"""The dual variable: dual ascent by hand, the clamp at 0, fixed lambda when disabled, exact state round trip."""

from __future__ import annotations

import math

import pytest

from craft import CRaFTConfig, DualVariable


def test_dual_ascent_steps_by_hand() -> None:
    dual = DualVariable(retention_budget=0.1, dual_lr=0.5, initial_lambda=0.0)
    # 0 + 0.5 * (0.5 - 0.1) = 0.2; 0.2 + 0.5 * (0.3 - 0.1) = 0.3; 0.3 + 0.5 * (0.1 - 0.1) = 0.3
    assert dual.update(0.5) == pytest.approx((0.0, 0.2))
    assert dual.update(0.3) == pytest.approx((0.2, 0.3))
    assert dual.update(0.1) == pytest.approx((0.3, 0.3))
    # 0.3 + 0.5 * (0.0 - 0.1) = 0.25; then 0.25 + 0.5 * (-0.9) < 0 is clamped to 0, and stays there.
    assert dual.update(0.0) == pytest.approx((0.3, 0.25))
    assert dual.update(-0.8) == pytest.approx((0.25, 0.0))
    assert dual.update(0.0) == (0.0, 0.0)
    assert dual.value == 0.0 and dual.num_updates == 6


def test_disabled_dual_keeps_fixed_lambda() -> None:
    dual = DualVariable.from_config(CRaFTConfig(enable_dual=False, fixed_lambda=0.7, initial_lambda=0.2))
    assert dual.value == 0.7
    for loss in (5.0, 0.0, 100.0):
        assert dual.update(loss) == (0.7, 0.7)


def test_from_config_starts_at_initial_lambda() -> None:
    dual = DualVariable.from_config(CRaFTConfig(initial_lambda=0.25, dual_lr=1.0, retention_budget=0.5))
    assert dual.value == 0.25
    assert dual.update(1.0) == (0.25, 0.75)


def test_non_finite_loss_is_refused() -> None:
    dual = DualVariable(retention_budget=0.1, dual_lr=0.5)
    with pytest.raises(ValueError, match="finite"):
        dual.update(math.nan)
    assert dual.value == 0.0


def test_state_dict_round_trip_is_exact() -> None:
    dual = DualVariable(retention_budget=0.1, dual_lr=0.03, initial_lambda=0.0)
    for loss in (0.37, 0.21, 0.55):
        dual.update(loss)
    restored = DualVariable(retention_budget=0.1, dual_lr=0.03, initial_lambda=0.0)
    restored.load_state_dict(dual.state_dict())
    assert restored.value == dual.value and restored.num_updates == 3
    assert restored.update(0.42) == dual.update(0.42)


def test_disabled_dual_ignores_a_loaded_lambda() -> None:
    learned = DualVariable(retention_budget=0.1, dual_lr=1.0, initial_lambda=2.0)
    fixed = DualVariable(retention_budget=0.1, dual_lr=1.0, enabled=False, fixed_lambda=0.1)
    fixed.load_state_dict(learned.state_dict())
    assert fixed.value == 0.1
