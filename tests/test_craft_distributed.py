"""Two gloo ranks with half a batch each must produce the gradients, stats and lambda of one process on the whole batch.

Run as a script, this file is one rank of that run (the test launches two of them).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from craft import CRaFTConfig, CRaFTStep, TokenMasks, extract_features, retention_loss

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
STEPS = 3
CONFIG = CRaFTConfig(retention_budget=0.01, dual_lr=5.0, initial_lambda=0.2, anchor_layer_idx=-2)


class TinyPolicy(nn.Module):
    """Two layers reached by both losses and a head reached only by the action loss (last token)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 4), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        hidden = [tokens]
        for layer in self.layers:
            hidden.append(torch.tanh(layer(hidden[-1])))
        return hidden, self.head(hidden[-1][:, -1])


def _masks(batch: int) -> TokenMasks:
    positions = torch.arange(4).expand(batch, 4)
    return TokenMasks(vision=positions < 2, prompt=positions == 2, action_query=positions == 3)


def train(shard: int, num_shards: int, micro_batches_per_step: int) -> dict[str, Any]:
    """SGD + CRaFT on this shard of every batch; per-step stats and gradients, final parameters and lambda."""
    torch.manual_seed(0)
    anchor = TinyPolicy().double().requires_grad_(False)
    model = copy.deepcopy(anchor).requires_grad_(True)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = CRaFTStep(model.parameters(), CONFIG, accumulate_dtype=torch.float64)
    records = []
    for index in range(STEPS):
        generator = torch.Generator().manual_seed(index)
        tokens = torch.randn(BATCH, 4, 3, generator=generator, dtype=torch.float64)
        targets = torch.randn(BATCH, 2, generator=generator, dtype=torch.float64)
        rows = slice(shard * BATCH // num_shards, (shard + 1) * BATCH // num_shards)
        micro_batches = zip(
            tokens[rows].chunk(micro_batches_per_step), targets[rows].chunk(micro_batches_per_step), strict=True
        )
        for micro_tokens, micro_targets in micro_batches:
            hidden, actions = model(micro_tokens)
            with torch.no_grad():
                anchor_features = extract_features(
                    anchor(micro_tokens)[0], _masks(len(micro_tokens)), anchor_layer_idx=-2
                )
            features = extract_features(hidden, _masks(len(micro_tokens)), anchor_layer_idx=-2)
            step.accumulate(F.mse_loss(actions, micro_targets), retention_loss(features, anchor_features))
        stats = step.finish()
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        records.append({"stats": asdict(stats), "grads": grads})
        optimizer.step()
        step.commit()
        optimizer.zero_grad(set_to_none=True)
    params = [p.detach().clone() for p in model.parameters()]
    return {"records": records, "params": params, "lambda": step.lambda_value}


def _run_rank(rank: int, world_size: int, init_method: str, out: Path) -> None:
    """One rank: half of every batch in two micro-batches; counts the all-reduce calls CRaFT makes."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    calls = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    try:
        result = train(rank, world_size, micro_batches_per_step=2)
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()
    torch.save({**result, "all_reduce_calls": len(calls)}, out)


def _assert_results_close(got: dict[str, Any], want: dict[str, Any], exact: bool) -> None:
    tolerance = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 1e-6, "atol": 1e-9}
    for got_record, want_record in zip(got["records"], want["records"], strict=True):
        got_stats, want_stats = got_record["stats"], want_record["stats"]
        for key in ("num_conflicting", "num_both", "retention_nonfinite"):
            assert got_stats[key] == want_stats[key], key
        for key in ("retention_loss", "lambda_before", "lambda_after", "conflict_ratio", "act_grad_norm"):
            assert got_stats[key] == pytest.approx(want_stats[key], rel=tolerance["rtol"], abs=tolerance["atol"]), key
        for got_grad, want_grad in zip(got_record["grads"], want_record["grads"], strict=True):
            torch.testing.assert_close(got_grad, want_grad, **tolerance)
    for got_param, want_param in zip(got["params"], want["params"], strict=True):
        torch.testing.assert_close(got_param, want_param, **tolerance)
    assert got["lambda"] == pytest.approx(want["lambda"], rel=tolerance["rtol"], abs=tolerance["atol"])


@pytest.mark.multiprocess
def test_two_gloo_ranks_match_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    init_method = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), "2", init_method, str(tmp_path / f"rank{rank}.pt")],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output[-2000:]}"

    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    single = train(shard=0, num_shards=1, micro_batches_per_step=1)
    assert sum(r["stats"]["num_conflicting"] for r in single["records"]) > 0, "the toy must exercise the projection"
    assert single["lambda"] != CONFIG.initial_lambda
    assert [r["stats"]["num_microbatches"] for r in ranks[0]["records"]] == [4] * STEPS  # 2 ranks x 2
    assert ranks[0]["all_reduce_calls"] == ranks[1]["all_reduce_calls"] == STEPS  # one collective per step
    _assert_results_close(ranks[1], ranks[0], exact=True)  # every rank holds the same gradients and lambda
    _assert_results_close(ranks[0], single, exact=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rank", type=int)
    parser.add_argument("world_size", type=int)
    parser.add_argument("init_method")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    _run_rank(args.rank, args.world_size, args.init_method, args.out)
