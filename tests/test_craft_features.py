"""Feature extraction and retention loss on hidden states whose values reveal which layer and tokens were pooled."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from craft import (
    TokenMasks,
    deepest_hidden_state_index,
    extract_features,
    masked_mean_pool,
    resolve_layer_index,
    retention_loss,
)

NUM_LAYERS = 4
SEQ_LEN = 8
DIM = 3


def _crafted_hidden_states(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """L + 1 tensors (2, S, D) with value layer * 1000 + position; padding (positions 6, 7 of sample 1) is NaN."""
    positions = torch.arange(SEQ_LEN, dtype=torch.float32).view(1, SEQ_LEN, 1).expand(2, SEQ_LEN, DIM)
    states = []
    for layer in range(NUM_LAYERS + 1):
        hidden = (layer * 1000 + positions).clone()
        hidden[1, 6:] = math.nan
        states.append(hidden.to(dtype))
    return states


def _masks() -> TokenMasks:
    """Sample 0: pad 0, vision 1-3, prompt 4-5, action queries 6-7. Sample 1: vision 0-1, prompt 2-4, query 5."""

    def mask(rows: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(2, SEQ_LEN, dtype=torch.bool)
        for sample, positions in enumerate(rows):
            out[sample, positions] = True
        return out

    return TokenMasks(
        vision=mask([[1, 2, 3], [0, 1]]),
        prompt=mask([[4, 5], [2, 3, 4]]),
        action_query=mask([[6, 7], [5]]),
    )


# Pooled value per sample = layer * 1000 + mean of the selected positions.
VISION_MEAN = [2.0, 0.5]
VISION_PROMPT_MEAN = [3.0, 2.0]
ACTION_QUERY_MEAN = [6.5, 5.0]


def _expected(layer: int, means: list[float]) -> torch.Tensor:
    return torch.tensor([[layer * 1000 + m] * DIM for m in means])


@pytest.mark.parametrize(
    ("anchor_layer_idx", "num_layers", "expected"),
    [(None, 4, 2), (None, 5, 2), (None, 1, 0), (0, 4, 0), (4, 4, 4), (2, 4, 2), (-1, 4, 4), (-2, 4, 3), (-5, 4, 0)],
)
def test_resolve_layer_index(anchor_layer_idx: int | None, num_layers: int, expected: int) -> None:
    assert resolve_layer_index(anchor_layer_idx, num_layers) == expected


@pytest.mark.parametrize("anchor_layer_idx", [5, -6, 100])
def test_resolve_layer_index_out_of_range_names_the_field(anchor_layer_idx: int) -> None:
    with pytest.raises(ValueError, match=r"^anchor_layer_idx "):
        resolve_layer_index(anchor_layer_idx, 4)


def test_deepest_hidden_state_index() -> None:
    assert deepest_hidden_state_index(4, anchor_type="concat", anchor_layer_idx=1) == 4
    assert deepest_hidden_state_index(4, anchor_type="aq_only", anchor_layer_idx=None) == 4
    assert deepest_hidden_state_index(4, anchor_type="raw_only", anchor_layer_idx=None) == 2
    assert deepest_hidden_state_index(4, anchor_type="raw_only", anchor_layer_idx=-2) == 3
    with pytest.raises(ValueError, match=r"^anchor_layer_idx "):
        deepest_hidden_state_index(4, anchor_type="raw_only", anchor_layer_idx=7)
    with pytest.raises(ValueError, match=r"^anchor_type "):
        deepest_hidden_state_index(4, anchor_type="concatenate", anchor_layer_idx=None)


@pytest.mark.parametrize(
    ("cr_token_mode", "raw_means"), [("vision_only", VISION_MEAN), ("vision_plus_prompt", VISION_PROMPT_MEAN)]
)
@pytest.mark.parametrize(("anchor_layer_idx", "layer"), [(None, 2), (0, 0), (-1, 4), (3, 3)])
def test_features_for_every_anchor_type(
    cr_token_mode: str, raw_means: list[float], anchor_layer_idx: int | None, layer: int
) -> None:
    hidden, masks = _crafted_hidden_states(), _masks()
    raw = _expected(layer, raw_means)
    action_queries = _expected(NUM_LAYERS, ACTION_QUERY_MEAN)
    kwargs = {"anchor_layer_idx": anchor_layer_idx, "cr_token_mode": cr_token_mode}

    concat = extract_features(hidden, masks, anchor_type="concat", **kwargs)
    torch.testing.assert_close(concat, torch.cat([raw, action_queries], dim=-1), rtol=0, atol=0)
    aq_only = extract_features(hidden, masks, anchor_type="aq_only", **kwargs)
    torch.testing.assert_close(aq_only, action_queries, rtol=0, atol=0)
    raw_only = extract_features(hidden, masks, anchor_type="raw_only", **kwargs)
    torch.testing.assert_close(raw_only, raw, rtol=0, atol=0)


def test_features_are_fp32_from_bf16_hidden_states() -> None:
    features = extract_features(_crafted_hidden_states(torch.bfloat16), _masks(), anchor_layer_idx=0)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features[:, 0], torch.tensor([2.0, 0.5]), rtol=0, atol=0)


def test_features_from_hidden_states_cut_after_the_deepest_needed_layer() -> None:
    hidden, masks = _crafted_hidden_states(), _masks()
    deepest = deepest_hidden_state_index(NUM_LAYERS, anchor_type="raw_only", anchor_layer_idx=None)
    truncated = hidden[: deepest + 1]
    features = extract_features(truncated, masks, anchor_type="raw_only", num_layers=NUM_LAYERS)
    torch.testing.assert_close(features, _expected(2, VISION_MEAN), rtol=0, atol=0)
    with pytest.raises(ValueError, match="need hidden state 4"):
        extract_features(truncated, masks, anchor_type="concat", num_layers=NUM_LAYERS)


def test_masked_mean_pool_of_a_sample_without_tokens_is_zero() -> None:
    hidden = torch.ones(2, 3, 2)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    torch.testing.assert_close(masked_mean_pool(hidden, mask), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="mask"):
        masked_mean_pool(hidden, mask[:, :2])


def test_unknown_token_mode_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"^cr_token_mode "):
        extract_features(_crafted_hidden_states(), _masks(), cr_token_mode="prompt_only")


def test_retention_loss_value_dtype_and_flag() -> None:
    features = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.bfloat16, requires_grad=True)
    anchor = torch.zeros(2, 2, dtype=torch.bfloat16)
    result = retention_loss(features, anchor)
    assert result.loss.dtype == torch.float32
    assert result.loss.item() == pytest.approx((1 + 4 + 0 + 1) / 4)
    assert result.nonfinite.dtype == torch.bool and not result.nonfinite
    result.loss.backward()
    assert features.grad is not None

    poisoned = retention_loss(torch.tensor([[math.nan, 0.0]]), torch.zeros(1, 2))
    assert bool(poisoned.nonfinite)
    assert bool(retention_loss(torch.tensor([[math.inf]]), torch.zeros(1, 1)).nonfinite)
    with pytest.raises(ValueError, match="one shape"):
        retention_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_retention_loss_is_exactly_zero_when_the_model_equals_its_anchor() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh())
    anchor = copy.deepcopy(model).requires_grad_(False)
    tokens = torch.randn(2, SEQ_LEN, 3)
    masks = _masks()

    def hidden_states(net: nn.Sequential) -> list[torch.Tensor]:
        h1 = net[1](net[0](tokens))
        return [tokens.new_zeros(2, SEQ_LEN, 5), h1, net[3](net[2](h1))]

    features = extract_features(hidden_states(model), masks, cr_token_mode="vision_plus_prompt")
    with torch.no_grad():
        anchor_features = extract_features(hidden_states(anchor), masks, cr_token_mode="vision_plus_prompt")
    result = retention_loss(features, anchor_features)
    assert result.loss.item() == 0.0
    assert not bool(result.nonfinite)
