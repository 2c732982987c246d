"""craft.cheap: the retention subset is uniform and its L_ret unbiased, the anchor-feature cache computes each key
once and returns what it stored, CRaFTStep's separate-forward path gives the shared-forward gradients, and the slack
mode skips exactly the retention gradient of steps whose constraint is slack."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from craft import (
    AnchorFeatureCache,
    CRaFTConfig,
    CRaFTConfigError,
    CRaFTStep,
    constraint_is_slack,
    retention_loss,
    retention_subset,
)


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
    assert CRaFTConfig(slack_margin=0.5).slack_margin == 0.5 and CRaFTConfig().slack_margin == 0.0
    for bad in (-0.1, 1.5, float("inf")):
        with pytest.raises(CRaFTConfigError, match="slack_margin"):
            CRaFTConfig(slack_margin=bad)


def test_the_constraint_is_slack_only_with_lambda_zero_and_a_measured_retention_inside_the_margin() -> None:
    assert constraint_is_slack(0.0, 0.04, budget=0.1, margin=0.5)
    assert constraint_is_slack(0.0, 0.05, budget=0.1, margin=0.5)  # at the margin: still slack
    assert not constraint_is_slack(0.0, 0.06, budget=0.1, margin=0.5)
    assert not constraint_is_slack(1e-9, 0.0, budget=0.1, margin=0.5)  # lambda > 0: the constraint is active
    assert not constraint_is_slack(0.0, None, budget=0.1, margin=0.5)  # nothing measured yet
    assert not constraint_is_slack(0.0, float("nan"), budget=0.1, margin=0.5)
    assert not constraint_is_slack(0.0, 0.0, budget=0.1, margin=0.0)  # the exact mode never skips


def _toy_run(margin: float, steps: int, budget: float, seed: int = 0, state: dict | None = None) -> tuple:
    """`steps` CRaFT steps of a two-layer toy (SGD, lr 0.5) whose trunk features drift from an anchor; returns the
    per-step stats, the final weights and the CRaFT state."""
    torch.manual_seed(seed)
    trunk, head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    params = [*trunk.parameters(), *head.parameters()]
    inputs, targets = torch.randn(8, 4), torch.randn(8, 2)
    anchor = trunk(inputs).detach()
    step = CRaFTStep(params, CRaFTConfig(retention_budget=budget, dual_lr=5.0, slack_margin=margin))
    if state is not None:
        step.load_state_dict(state)
    optimizer = torch.optim.SGD(params, lr=0.5)
    history = []
    for _ in range(steps):
        features = trunk(inputs)
        step.accumulate((head(features) - targets).abs().mean(), retention_loss(features, anchor))
        history.append(step.finish(sync=False))
        optimizer.step()
        step.commit()
        optimizer.zero_grad(set_to_none=True)
    return history, [p.detach().clone() for p in params], step.state_dict()


def test_slack_steps_skip_the_retention_gradient_and_the_exact_mode_is_unchanged() -> None:
    budget = 0.02
    exact, exact_weights, _ = _toy_run(0.0, 12, budget)
    slack, _, _ = _toy_run(0.5, 12, budget)
    assert all(s.retention_gradient for s in exact)
    assert slack[0].retention_gradient  # the first step has no measurement to go by
    for before, now in itertools.pairwise(slack):
        slack_now = before.lambda_after == 0.0 and before.retention_loss <= 0.5 * budget
        assert now.retention_gradient == (not slack_now)
        if not now.retention_gradient:  # g_ret skipped: no projection, no retention gradient norm
            assert now.ret_grad_norm == 0.0 and now.num_both == 0 and now.lambda_before == 0.0
    assert not all(s.retention_gradient for s in slack)  # some steps were slack ...
    assert any(s.retention_gradient for s in slack[1:])  # ... and the drift brought the exact steps back
    assert all(s.retention_loss == s.retention_loss for s in slack)  # L_ret measured on every step
    # margin 0 is the exact method, bit for bit
    again, again_weights, _ = _toy_run(0.0, 12, budget)
    assert [s.retention_loss for s in again] == [s.retention_loss for s in exact]
    assert all(torch.equal(a, b) for a, b in zip(again_weights, exact_weights, strict=True))


def test_the_slack_decision_resumes_from_the_state_dict() -> None:
    """The last measured L_ret is part of the state, so a resumed run makes the same skip decision."""
    budget = 0.02
    whole, _, _ = _toy_run(0.5, 6, budget)
    _, _, state = _toy_run(0.5, 5, budget)
    assert state["last_retention"] == whole[4].retention_loss
    step = CRaFTStep([torch.nn.Parameter(torch.zeros(1))], CRaFTConfig(retention_budget=budget, slack_margin=0.5))
    step.load_state_dict(state)
    assert step.slack == (not whole[5].retention_gradient)
    legacy = {key: value for key, value in state.items() if key != "last_retention"}  # a checkpoint from before
    step.load_state_dict(legacy)
    assert step.last_retention is None and not step.slack


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
