"""Paper sweeps: the commands each script plans, skip/resume of runs, failure handling, tables and plots."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "craft_experiments"
sys.path.insert(0, str(EXPERIMENTS))
import make_tables  # noqa: E402  (a script folder, not a package)

SCRIPTS = {
    "table1": EXPERIMENTS / "01_main_results" / "run_table1_experiments.sh",
    "table2": EXPERIMENTS / "02_stability_efficiency" / "run_table2_fewshot.sh",
    "table4": EXPERIMENTS / "03_ablations" / "run_table4_ablations.sh",
}


def sweep(script: str, tmp_path: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "GPUS": "cpu", "RUN_ROOT": str(tmp_path / "runs"), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", SCRIPTS[script].name],
        cwd=SCRIPTS[script].parent,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def planned(output: str) -> tuple[list[str], list[str]]:
    lines = [line for line in output.splitlines() if line.strip()]
    return [line for line in lines if "finetune.py" in line], [line for line in lines if "eval_" in line]


def run_names(commands: list[str]) -> list[str]:
    return [re.search(r"--run_id_override (\S+)", c).group(1) for c in commands]


def test_table1_plans_every_suite_method_and_seed(tmp_path: Path) -> None:
    proc = sweep("table1", tmp_path, DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    train, evals = planned(proc.stdout)
    expected = {
        f"table1-{s}-{m}-seed{seed}"
        for s in ("spatial", "object", "goal", "long")
        for m in ("baseline", "craft")
        for seed in (42, 123, 456)
    }
    assert set(run_names(train)) == expected and len(train) == 24 and len(evals) == 24
    craft = [c for c in train if "-craft-" in c]
    assert all("--use_craft True" in c and "--craft_" not in c for c in craft)  # the defaults are the full method
    assert all("--use_craft False" in c for c in train if "-baseline-" in c)
    assert all("--dataset_name libero_10_no_noops" in c for c in train if "-long-" in c)
    assert all("--max_steps 20000" in c and f"--run_root_dir {tmp_path / 'runs'}/table1-" in c for c in train)
    assert all("--task_suite_name libero_goal" in c for c in evals if "-goal-" in c)
    assert not any("--heldout_episode_fraction" in c for c in train)  # every episode trains, like VLA-Adapter


def test_smoke_mode_builds_its_assets_and_trains_each_suite_on_its_own_data(tmp_path: Path) -> None:
    proc = sweep("table1", tmp_path, DRY_RUN="1", SMOKE="1", SUITES="goal long", SEEDS="42")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "make_tiny_vlm.py" in lines[0]
    assert "make_synthetic_libero.py" in lines[1]
    assert r"--suites \[libero_10_no_noops\,libero_goal_no_noops\]" in lines[1]
    train, _ = planned(proc.stdout)
    assert len(train) == 4
    assert all("--dataset_name libero_goal_no_noops" in c for c in train if "-goal-" in c)
    assert all("--dataset_name libero_10_no_noops" in c for c in train if "-long-" in c)
    assert all("--max_steps 8" in c and "--data_root_dir data/synthetic_libero" in c for c in train)
    assert all("--heldout_episode_fraction 0.05" in c for c in train)  # the offline evaluation needs unseen episodes


def test_table2_and_table4_plans(tmp_path: Path) -> None:
    train, _ = planned(sweep("table2", tmp_path, DRY_RUN="1").stdout)
    assert sorted(run_names(train)) == sorted(
        f"table2-{k}shot-{m}-seed{s}" for k in (5, 10) for m in ("baseline", "craft") for s in (42, 123, 456)
    )
    assert all(
        f"--n_shot_episodes {name.split('-')[1].removesuffix('shot')}" in c
        for c, name in zip(train, run_names(train), strict=True)
    )
    train, evals = planned(sweep("table4", tmp_path, DRY_RUN="1", EVAL="offline").stdout)
    by_name = dict(zip(run_names(train), train, strict=True))
    assert len(by_name) == 15
    assert "--craft_enable_projection False" in by_name["table4-no_projection-seed42"]
    assert "--craft_enable_dual False" in by_name["table4-no_dual-seed123"]
    assert "--craft_" not in by_name["table4-full-seed42"] and "--batch_size" not in by_name["table4-full-seed42"]
    assert "--craft_anchor_type aq_only" in by_name["table4-aq_only-seed456"]
    assert "--craft_anchor_type raw_only" in by_name["table4-raw_only-seed42"]
    assert all("--dataset_name libero_10_no_noops" in c for c in train)
    assert all("eval_offline.py" in c for c in evals)
    assert all("--heldout_episode_fraction 0.05" in c for c in train)
    bad = sweep("table4", tmp_path, DRY_RUN="1", ABLATIONS="no_anchor")
    assert bad.returncode == 2 and "unknown ablation" in bad.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_table2_smoke_trains_and_evaluates_every_run(tmp_path: Path, tiny_assets: tuple[Path, Path]) -> None:
    """SMOKE=1 end to end: assets, few-shot training of both methods, offline evaluation, tables."""
    planned_smoke, _ = planned(sweep("table2", tmp_path, DRY_RUN="1", SMOKE="1").stdout)
    assert sorted({re.search(r"--n_shot_episodes (\d+)", c).group(1) for c in planned_smoke}) == ["1", "2"]
    env = {
        "SMOKE": "1",
        "SHOTS": "1",
        "SEEDS": "42",
        "STEPS": "2",
        "SAVE_FREQ": "1",
        "VLM_PATH": str(tiny_assets[0]),
        "CONFIG_FILE_PATH": str(tiny_assets[1]),
        "DATA_ROOT_DIR": str(tmp_path / "data"),
        "SMOKE_EPISODES_PER_TASK": "2",
        "EXTRA_ARGS": "--lora_rank 4 --shuffle_buffer_size 50 --batch_size 1 --keep_last_n_checkpoints 1",
        "EVAL_ARGS": "--max_samples 4",
        "VLA_CRAFT_CACHE_DIR": str(tmp_path / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    proc = sweep("table2", tmp_path, timeout=900, **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = tmp_path / "runs"
    for method in ("baseline", "craft"):
        name = f"table2-1shot-{method}-seed42"
        assert (runs / name / "status").read_text().strip() == "done"
        assert sorted(p.name for p in (runs / name).glob("*_chkpt")) == [f"{name}--2_chkpt"]  # kept: the newest
        episodes = json.loads((runs / name / name / "episodes.json").read_text())
        assert len(episodes) == 10  # one demonstration of each of the 10 tasks
        offline = json.loads((runs / name / "offline_eval.json").read_text())
        assert offline["num_samples"] == 4
    table2 = make_tables.build_tables(make_tables.load_runs(runs))["table2_offline"]
    assert table2.header == ["Method", "1-shot"]
    assert all(row[1].endswith("(1/3)") for row in table2.rows), table2.rows  # one seed of each method


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = runs / "table1-spatial-baseline-seed42"
    (done / "table1-spatial-baseline-seed42--20000_chkpt").mkdir(parents=True)
    (done / "table1-spatial-baseline-seed42--20000_chkpt" / "training_state.pt").write_bytes(b"x")
    (done / "eval_libero_spatial").mkdir()
    (done / "eval_libero_spatial" / "eval_results.json").write_text("{}")
    half = runs / "table1-spatial-craft-seed42"
    (half / "table1-spatial-craft-seed42").mkdir(parents=True)
    (half / "table1-spatial-craft-seed42--5000_chkpt").mkdir()
    (half / "table1-spatial-craft-seed42--5000_chkpt" / "training_state.pt").write_bytes(b"x")
    (half / "table1-spatial-craft-seed42" / "latest_checkpoint.txt").write_text(
        "table1-spatial-craft-seed42--5000_chkpt\n"
    )
    proc = sweep("table1", tmp_path, DRY_RUN="1", SUITES="spatial", SEEDS="42")
    assert "# skip training (finished): table1-spatial-baseline-seed42" in proc.stdout
    train, evals = planned(proc.stdout)
    assert len(train) == 1 and "--resume True --resume_step 5000 --resum_vla_path" in train[0]
    assert "table1-spatial-craft-seed42--5000_chkpt --max_steps 20000" in train[0]
    assert len(evals) == 1 and "table1-spatial-craft-seed42--20000_chkpt" in evals[0]


def test_a_failed_run_does_not_stop_the_sweep(tmp_path: Path) -> None:
    # A stand-in for python: "trains" by writing the final checkpoint, and fails for one run.
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        "root=''; id=''; steps=''\n"
        'while [[ $# -gt 0 ]]; do case "$1" in --run_root_dir) root=$2;; --run_id_override) id=$2;; '
        "--max_steps) steps=$2;; esac; shift; done\n"
        '[[ "$id" == *craft-seed2 ]] && { echo boom >&2; exit 1; }\n'
        'mkdir -p "$root/$id--${steps}_chkpt" && touch "$root/$id--${steps}_chkpt/training_state.pt"\n'
    )
    stub.chmod(0o755)
    proc = sweep("table1", tmp_path, PYTHON=str(stub), SUITES="spatial", SEEDS="1 2", EVAL="none", STEPS_SPATIAL="3")
    assert proc.returncode == 1
    assert "1 run(s) failed: table1-spatial-craft-seed2" in proc.stdout
    runs = tmp_path / "runs"
    for name in ("table1-spatial-baseline-seed1", "table1-spatial-baseline-seed2", "table1-spatial-craft-seed1"):
        assert (runs / name / f"{name}--3_chkpt" / "training_state.pt").is_file()
        assert (runs / name / "status").read_text().strip() == "done"
        assert "finetune.py" in (runs / name / "command.sh").read_text()
    assert "FAILED training" in (runs / "table1-spatial-craft-seed2" / "status").read_text()
    assert "boom" in (runs / "table1-spatial-craft-seed2" / "train.log").read_text()


def fabricate(
    root: Path,
    name: str,
    success: float | None,
    retention: list[float],
    conflict: float,
    offline_l1: float | None = None,
) -> None:
    run = root / name
    (run / name).mkdir(parents=True)
    rows = [
        {
            "step": i + 1,
            "VLA Train/Loss": 0.5 - 0.01 * i,
            "CRaFT/Retention Loss": r,
            "CRaFT/Lambda After": 0.1,
            "CRaFT/Conflict Ratio": conflict,
        }
        for i, r in enumerate(retention)
    ]
    (run / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / name / "finetune_config.yaml").write_text("craft_retention_budget: 0.1\n")
    if success is not None:
        (run / "eval_libero_spatial").mkdir()
        (run / "eval_libero_spatial" / "eval_results.json").write_text(json.dumps({"total": {"success_rate": success}}))
    if offline_l1 is not None:
        (run / "offline_eval.json").write_text(
            json.dumps({"action_l1": {"normalized/all": offline_l1}, "cka": {"raw": {"0": 1.0, "4": 0.8}}})
        )


def test_tables_and_plots_from_fabricated_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fabricate(root, "table1-spatial-baseline-seed42", 0.80, [0.2] * 10, 0.4, 0.30)
    fabricate(root, "table1-spatial-baseline-seed123", 0.90, [0.3] * 10, 0.5, 0.32)
    fabricate(root, "table1-spatial-craft-seed42", 0.95, [0.1] * 10, 0.1, 0.25)
    fabricate(root, "table4-no_dual-seed42", 0.70, [0.05] * 20, 0.2)
    fabricate(root, "table4-no_dual-seed123", 0.60, [0.07] * 20, 0.3)
    (root / "unrelated-run").mkdir()
    runs = make_tables.load_runs(root)
    assert len(runs) == 5
    tables = make_tables.build_tables(runs)
    t1 = tables["table1"]
    baseline, craft = t1.rows
    assert baseline[0] == "Baseline" and baseline[1] == "85.0 ± 7.1 (2/3)"
    assert craft[1] == "95.0 ± 0.0 (1/3)" and craft[2] == make_tables.MISSING and craft[-1] == make_tables.MISSING
    assert any("spatial-craft: 1/3 seeds" in note for note in t1.notes)
    assert tables["table1_offline"].rows[0][1] == "0.3100 ± 0.0141 (2/3)"
    t4 = {row[0]: row for row in tables["table4"].rows}
    assert t4["w/o Dual"][1] == "65.0 ± 7.1 (2/3)" and t4["w/o Dual"][2] == "0.0600 ± 0.0141 (2/3)"
    assert t4["AQ Only"][1] == make_tables.MISSING
    assert r"85.0 $\pm$ 7.1 (2/3)" in t1.latex() and "\\toprule" in t1.latex()
    out = root / "results"  # the default --out_dir: beside the runs, not in the working directory
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "make_tables.py"), "--run_root", str(root)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "results").exists()
    for name in (
        "table1.md",
        "table1.tex",
        "table2.md",
        "table4.md",
        "table4.tex",
        "retention_vs_budget.png",
        "lambda.png",
        "conflict_ratio.png",
        "action_loss.png",
        "success_rates.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "85.0 ± 7.1 (2/3)" in (out / "table1.md").read_text()


def test_make_tables_needs_runs(tmp_path: Path) -> None:
    assert make_tables.load_runs(tmp_path / "missing") == []
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "make_tables.py"), "--run_root", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "no table1-/table2-/table4- runs" in proc.stderr
