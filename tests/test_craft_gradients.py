"""The two-set gradient accumulator: unused parameters, flags, per-set averaging, scalars and reset."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from craft import GradientAccumulator


def _params() -> list[torch.Tensor]:
    return [
        torch.zeros(2, requires_grad=True),
        torch.zeros(1, 3, requires_grad=True),
        torch.zeros(1, requires_grad=True),
    ]


def test_accumulates_both_sets_separately_and_averages_by_their_own_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        dist, "all_reduce", lambda *args, **kwargs: pytest.fail("no all-reduce outside torch.distributed")
    )
    acc = GradientAccumulator(_params(), scalar_names=("loss",))
    acc.add(
        [torch.tensor([1.0, 2.0]), None, torch.tensor([4.0])],
        [None, torch.tensor([[3.0, 3.0, 3.0]]), None],
    )
    acc.add_scalar("loss", torch.tensor(0.25))
    acc.add([torch.tensor([3.0, 4.0]), torch.tensor([[2.0, 0.0, -2.0]]), None], None)
    acc.add_scalar("loss", 0.5)
    assert acc.num_microbatches == 2 and acc.num_retention_microbatches == 1

    totals = acc.finalize(sync=True)
    assert totals.world_size == 1
    assert totals.has_act.tolist() == [True, True, True]
    assert totals.has_ret.tolist() == [False, True, False]
    assert totals.act_count.item() == 2 and totals.ret_count.item() == 1
    assert totals.scalars["loss"].item() == 0.75
    # Action gradients: sum over the two micro-batches / 2, a missing gradient counts as zero.
    torch.testing.assert_close(acc.act_grads[0], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(acc.act_grads[1], torch.tensor([[1.0, 0.0, -1.0]]))
    torch.testing.assert_close(acc.act_grads[2], torch.tensor([2.0]))
    # Retention gradients: one contributing micro-batch, so divided by 1.
    torch.testing.assert_close(acc.ret_grads[1], torch.tensor([[3.0, 3.0, 3.0]]))
    torch.testing.assert_close(acc.ret_grads[0], torch.zeros(2))
    assert acc.act_grads[1].shape == (1, 3)

    with pytest.raises(RuntimeError, match="reset"):
        acc.add([None, None, None])
    acc.reset()
    assert acc.num_microbatches == 0
    assert all(torch.count_nonzero(g) == 0 for g in [*acc.act_grads, *acc.ret_grads])
    acc.add([None, None, torch.tensor([1.0])])
    totals = acc.finalize(sync=False)
    assert totals.has_act.tolist() == [False, False, True] and totals.scalars["loss"].item() == 0.0


def test_views_share_one_buffer_in_the_chosen_dtype() -> None:
    acc = GradientAccumulator(_params(), dtype=torch.float64)
    acc.add([torch.ones(2, dtype=torch.bfloat16), None, None])
    assert acc.act_grads[0].dtype == torch.float64
    assert acc.act_flat.data_ptr() == acc.act_grads[0].data_ptr()
    assert acc.act_flat.numel() == acc.ret_flat.numel() == 6


def test_rejects_wrong_inputs() -> None:
    with pytest.raises(ValueError, match="at least one"):
        GradientAccumulator([])
    acc = GradientAccumulator(_params(), scalar_names=("loss",))
    with pytest.raises(ValueError, match="expected 3 gradients"):
        acc.add([None])
    with pytest.raises(ValueError, match="shape"):
        acc.add([torch.ones(3), None, None])
    with pytest.raises(KeyError, match="unknown scalar"):
        acc.add_scalar("los", 1.0)
    with pytest.raises(RuntimeError, match="before any micro-batch"):
        acc.finalize()
