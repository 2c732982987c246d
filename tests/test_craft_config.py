"""CRaFT config: the user's-guide defaults, and validation at construction with errors that name the field."""

from __future__ import annotations

import math

import pytest

from craft import CRaFTConfig, CRaFTConfigError


def test_defaults_match_the_users_guide() -> None:
    config = CRaFTConfig()
    assert config.retention_budget == 0.1
    assert config.dual_lr == 0.01
    assert config.enable_projection is True
    assert config.enable_dual is True
    assert config.fixed_lambda == 0.1
    assert config.anchor_type == "concat"
    assert config.anchor_layer_idx is None
    assert config.cr_token_mode == "vision_only"
    assert config.projection_delta == 1e-8
    assert config.initial_lambda == 0.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retention_budget", -1, "retention_budget must be > 0 (got -1)"),
        ("retention_budget", 0.0, "retention_budget must be > 0 (got 0.0)"),
        ("retention_budget", math.nan, "retention_budget must be a finite number"),
        ("dual_lr", -0.5, "dual_lr must be >= 0 (got -0.5)"),
        ("fixed_lambda", -0.1, "fixed_lambda must be >= 0 (got -0.1)"),
        ("initial_lambda", -2.0, "initial_lambda must be >= 0 (got -2.0)"),
        ("projection_delta", 0.0, "projection_delta must be > 0 (got 0.0)"),
        ("projection_delta", math.inf, "projection_delta must be a finite number"),
        ("anchor_type", "both", "anchor_type must be one of concat, aq_only, raw_only (got 'both')"),
        ("cr_token_mode", "prompt_only", "cr_token_mode must be one of vision_only, vision_plus_prompt"),
        ("anchor_layer_idx", 1.5, "anchor_layer_idx must be an integer or None (got 1.5)"),
        ("enable_dual", "yes", "enable_dual must be a boolean"),
    ],
)
def test_a_bad_value_cannot_be_built_and_the_error_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(CRaFTConfigError) as excinfo:
        CRaFTConfig(**{field: value})
    assert message in str(excinfo.value) and excinfo.value.field == field


def test_zero_dual_lr_and_zero_fixed_lambda_are_valid() -> None:
    CRaFTConfig(dual_lr=0.0, fixed_lambda=0.0, anchor_layer_idx=-1, anchor_type="raw_only")
