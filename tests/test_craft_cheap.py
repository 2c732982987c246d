"""craft.cheap: the retention subset is uniform and its L_ret unbiased, the anchor-feature cache computes each key
once and returns what it stored, and CRaFTStep's separate-forward path gives the shared-forward gradients."""

from __future__ import annotations

import functools

import pytest
import torch

from craft import AnchorFeatureCache, CRaFTConfig, CRaFTConfigError, CRaFTStep, retention_loss, retention_subset


def test_retention_subset_size_order_and_uniformity() -> None:
    generator = torch.Generator().manual_seed(0)
    assert retention_subset(8, 1.0, generator).tolist() == list(range(8))
    assert len(retention_subset(8, 0.25, generator)) == 2 and len(retention_subset(3, 0.01, generator)) == 1
    rows = retention_subset(10, 0.5, generator)
    assert rows.tolist() == sorted(set(rows.tolist()))
    counts = torch.zeros(10)
    for _ in range(4000):
        counts[retention_subset(10, 0.3, generator)] += 1
    assert torch.allclose(counts / 4000, torch.full((10,), 0.3), atol=0.03)  # every sample equally likely
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        retention_subset(4, 0.0, generator)


def test_subset_retention_loss_is_an_unbiased_estimate() -> None:
    generator = torch.Generator().manual_seed(1)
    features, anchor = torch.randn(12, 5, generator=generator), torch.randn(12, 5, generator=generator)
    full = float(retention_loss(features, anchor).loss)
    draws = [
        float(retention_loss(features[rows], anchor[rows]).loss)
        for rows in (retention_subset(12, 0.25, generator) for _ in range(6000))
    ]
    assert sum(draws) / len(draws) == pytest.approx(full, rel=0.02)
    assert min(draws) < full < max(draws)  # an estimate, not the value


def test_anchor_feature_cache_computes_each_key_once() -> None:
    cache = AnchorFeatureCache()
    calls: list[list[int]] = []

    def compute(keys: list[str]):
        def rows_to_features(rows: list[int]) -> torch.Tensor:
            calls.append(rows)
            return torch.stack([torch.full((3,), float(ord(keys[row]))) for row in rows])

        return rows_to_features

    first = cache.features(["a", "b"], compute(["a", "b"]), "cpu")
    second = cache.features(["b", "c", "a"], compute(["b", "c", "a"]), "cpu")
    assert calls == [[0, 1], [1]]  # only "c" was new the second time
    assert torch.equal(second, torch.stack([first[1], torch.full((3,), float(ord("c"))), first[0]]))
    assert (cache.hits, cache.misses, len(cache)) == (2, 3, 3) and cache.hit_rate == pytest.approx(0.4)
    assert cache.nbytes == 3 * 3 * 4


def test_config_validates_the_cheap_modes() -> None:
    assert CRaFTConfig(retention_fraction=0.25).retention_fraction == 0.25
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(CRaFTConfigError, match="retention_fraction"):
            CRaFTConfig(retention_fraction=bad)
    with pytest.raises(CRaFTConfigError, match="cache_anchor_features"):
        CRaFTConfig(cache_anchor_features="yes")  # type: ignore[arg-type]


def test_a_retention_loss_from_its_own_forward_gives_the_shared_forward_gradients() -> None:
    """`accumulate(act_loss, callable)` (the retention forward runs after the action backward) equals the shared
    forward when both compute the same L_ret: same projected gradient, same lambda."""
    torch.manual_seed(0)
    inputs, targets, anchor = torch.randn(6, 4), torch.randn(6, 2), torch.randn(6, 3)
    results = []
    for separate in (False, True):
        torch.manual_seed(1)
        trunk, head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
        params = [*trunk.parameters(), *head.parameters()]
        step = CRaFTStep(params, CRaFTConfig(retention_budget=0.01, dual_lr=1.0, initial_lambda=0.5))
        features = trunk(inputs)
        act_loss = (head(features) - targets).abs().mean()
        if separate:
            step.accumulate(act_loss, functools.partial(lambda model: retention_loss(model(inputs), anchor), trunk))
        else:
            step.accumulate(act_loss, retention_loss(features, anchor))
        stats = step.finish(sync=False)
        results.append(([p.grad.clone() for p in params], stats.lambda_after, stats.conflict_ratio))
    (grads_shared, lambda_shared, conflict_shared), (grads_separate, lambda_separate, conflict_separate) = results
    for shared, separate in zip(grads_shared, grads_separate, strict=True):
        torch.testing.assert_close(shared, separate)
    assert lambda_shared == lambda_separate and conflict_shared == conflict_separate
