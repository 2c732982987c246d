"""CRaFT config: the user's-guide defaults, and validation errors that name the CLI flag."""

from __future__ import annotations

import math

import pytest

from craft import CRaFTConfig


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
    assert config.validate() is config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retention_budget", -1, "--craft_retention_budget must be > 0 (got -1)"),
        ("retention_budget", 0.0, "--craft_retention_budget must be > 0 (got 0.0)"),
        ("retention_budget", math.nan, "--craft_retention_budget must be a finite number"),
        ("dual_lr", -0.5, "--craft_dual_lr must be >= 0 (got -0.5)"),
        ("fixed_lambda", -0.1, "--craft_fixed_lambda must be >= 0 (got -0.1)"),
        ("initial_lambda", -2.0, "--craft_initial_lambda must be >= 0 (got -2.0)"),
        ("projection_delta", 0.0, "--craft_projection_delta must be > 0 (got 0.0)"),
        ("projection_delta", math.inf, "--craft_projection_delta must be a finite number"),
        ("anchor_type", "both", "--craft_anchor_type must be one of concat, aq_only, raw_only (got 'both')"),
        ("cr_token_mode", "prompt_only", "--craft_cr_token_mode must be one of vision_only, vision_plus_prompt"),
        ("anchor_layer_idx", 1.5, "--craft_anchor_layer_idx must be an integer or None (got 1.5)"),
        ("enable_dual", "yes", "--craft_enable_dual must be a boolean"),
    ],
)
def test_validate_names_the_flag(field: str, value: object, message: str) -> None:
    config = CRaFTConfig(**{field: value})
    with pytest.raises(ValueError) as excinfo:
        config.validate()
    assert message in str(excinfo.value)


def test_zero_dual_lr_and_zero_fixed_lambda_are_valid() -> None:
    CRaFTConfig(dual_lr=0.0, fixed_lambda=0.0, anchor_layer_idx=-1, anchor_type="raw_only").validate()
