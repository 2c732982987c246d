"""Paper sweeps: the commands each script plans (with their suites' recipes), skip/resume of runs, failure handling,
tables and plots."""

from __future__ import annotations

import json
import os
import re
import shlex
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
RECIPES_DIR = EXPERIMENTS / "recipes" / "vla-adapter"
RECIPES = make_tables.load_recipes("vla-adapter")
LIBERO = {"spatial": "libero_spatial", "object": "libero_object", "goal": "libero_goal", "long": "libero_10"}
# VLA-Adapter-Pro's published LIBERO success rates (README of OpenHelix-Team/VLA-Adapter; REFERENCE_FACTS section 5).
PUBLISHED_PRO = {"spatial": "99.6", "object": "99.6", "goal": "98.2", "long": "96.4"}
# The recipe keys passed to finetune.py as they are (KEY -> --key).
RECIPE_FLAGS = (
    "LEARNING_RATE",
    "LR_WARMUP_STEPS",
    "NUM_STEPS_BEFORE_DECAY",
    "LORA_RANK",
    "USE_PRO_VERSION",
    "IMAGE_AUG",
    "NUM_IMAGES_IN_INPUT",
    "USE_PROPRIO",
)


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


def flags_of(command: str) -> dict[str, str]:
    """`--flag value` pairs of a command; a repeated flag keeps its last value, as finetune.py's parser does."""
    tokens = shlex.split(command)
    return {t[2:]: tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t.startswith("--")}


def global_batch(command: str) -> int:
    flags = flags_of(command)
    return int(flags["batch_size"]) * int(flags["nproc-per-node"]) * int(flags["grad_accumulation_steps"])


def dry_table1(tmp_path: Path, **env: str) -> dict[str, str]:
    """The planned training command of each suite (baseline, seed 42) of a dry-run Table 1 sweep."""
    proc = sweep("table1", tmp_path, DRY_RUN="1", METHODS="baseline", SEEDS="42", **env)
    assert proc.returncode == 0, proc.stderr
    train, _ = planned(proc.stdout)
    return {re.search(r"table1-(\w+)-baseline", c).group(1): c for c in train}


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
    assert all(f"--run_root_dir {tmp_path / 'runs'}/table1-" in c for c in train)
    for c, name in zip(train, run_names(train), strict=True):  # each suite's own number of steps
        assert flags_of(c)["max_steps"] == RECIPES[name.split("-")[1]]["MAX_STEPS"], c
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
    for c in train:  # still tiny and fast with the recipes: batch 2, no accumulation, LoRA rank 8, one process
        flags = flags_of(c)
        assert (flags["batch_size"], flags["grad_accumulation_steps"], flags["lora_rank"]) == ("2", "1", "8"), c
        assert flags["nproc-per-node"] == "1" and flags["learning_rate"] == "2e-4"


def test_table2_and_table4_plans(tmp_path: Path) -> None:
    train, _ = planned(sweep("table2", tmp_path, DRY_RUN="1").stdout)
    spatial = RECIPES["spatial"]  # the LIBERO-Spatial recipe with fewer steps
    for c in train:
        flags = flags_of(c)
        assert flags["max_steps"] == "5000" and flags["learning_rate"] == spatial["LEARNING_RATE"], c
        assert flags["batch_size"] == spatial["BATCH_SIZE_1GPU"] and global_batch(c) == int(spatial["GLOBAL_BATCH"])
    assert sorted(run_names(train)) == sorted(
        f"table2-{k}shot-{m}-seed{s}" for k in (5, 10) for m in ("baseline", "craft") for s in (42, 123, 456)
    )
    assert all(
        f"--n_shot_episodes {name.split('-')[1].removesuffix('shot')}" in c
        for c, name in zip(train, run_names(train), strict=True)
    )
    train, _ = planned(sweep("table4", tmp_path, DRY_RUN="1", ABLATIONS="full", SEEDS="1", STEPS="123").stdout)
    assert [flags_of(c)["max_steps"] for c in train] == ["123"]
    train, evals = planned(sweep("table4", tmp_path, DRY_RUN="1", EVAL="offline").stdout)
    by_name = dict(zip(run_names(train), train, strict=True))
    assert len(by_name) == 15
    assert "--craft_enable_projection False" in by_name["table4-no_projection-seed42"]
    assert "--craft_enable_dual False" in by_name["table4-no_dual-seed123"]
    assert "--craft_" not in by_name["table4-full-seed42"]
    long = RECIPES["long"]  # the whole LIBERO-Long recipe, steps included: the "full" row is Table 1's CRaFT run
    assert all(flags_of(c)["max_steps"] == long["MAX_STEPS"] == "60000" for c in train)
    assert all(flags_of(c)["learning_rate"] == long["LEARNING_RATE"] and global_batch(c) == 64 for c in train)
    assert "--craft_anchor_type aq_only" in by_name["table4-aq_only-seed456"]
    assert "--craft_anchor_type raw_only" in by_name["table4-raw_only-seed42"]
    assert all("--dataset_name libero_10_no_noops" in c for c in train)
    assert all("eval_offline.py" in c for c in evals)
    assert all("--heldout_episode_fraction 0.05" in c for c in train)
    bad = sweep("table4", tmp_path, DRY_RUN="1", ABLATIONS="no_anchor")
    assert bad.returncode == 2 and "unknown ablation" in bad.stderr


def test_each_suite_trains_with_its_recipe(tmp_path: Path) -> None:
    """One GPU per run (and the CPU): the recipe's 1-GPU variant, steps, learning rate, schedule and model flags."""
    commands = dry_table1(tmp_path)
    assert set(commands) == set(RECIPES) == {"spatial", "object", "goal", "long"}
    steps = {suite: flags_of(c)["max_steps"] for suite, c in commands.items()}
    assert steps == {"spatial": "20000", "object": "5000", "goal": "50000", "long": "60000"}
    for suite, command in commands.items():
        recipe, flags = RECIPES[suite], flags_of(command)
        assert flags["dataset_name"] == recipe["DATASET"] == f"{LIBERO[suite]}_no_noops"
        assert flags["nproc-per-node"] == "1"
        assert flags["batch_size"] == recipe["BATCH_SIZE_1GPU"] == "4"
        assert flags["grad_accumulation_steps"] == recipe["GRAD_ACCUMULATION_STEPS_1GPU"] == "16"
        assert global_batch(command) == int(recipe["GLOBAL_BATCH"]) == 64
        for key in RECIPE_FLAGS:
            assert flags[key.lower()] == recipe[key], (suite, key)
            assert command.count(f"--{key.lower()} ") == 1, (suite, key)
        assert (flags["learning_rate"], flags["num_steps_before_decay"]) == ("2e-4", "150000")


@pytest.mark.parametrize(
    ("gpus", "per_run", "batch", "accum"), [("0,1,2,3", 4, 16, 1), ("0,1", 2, 16, 2), ("0,1,2,3,4,5,6,7", 8, 8, 1)]
)
def test_gpus_per_run_keep_the_global_batch(tmp_path: Path, gpus: str, per_run: int, batch: int, accum: int) -> None:
    """4 GPUs per run: the recipe's 4-GPU variant; other counts that divide the global batch: derived from it."""
    commands = dry_table1(tmp_path, GPUS=gpus, GPUS_PER_RUN=str(per_run))
    for suite, command in commands.items():
        flags = flags_of(command)
        assert (flags["nproc-per-node"], flags["batch_size"], flags["grad_accumulation_steps"]) == (
            str(per_run),
            str(batch),
            str(accum),
        ), command
        assert global_batch(command) == int(RECIPES[suite]["GLOBAL_BATCH"]) == 64
        if per_run == 4:
            assert (flags["batch_size"], flags["grad_accumulation_steps"]) == (
                RECIPES[suite]["BATCH_SIZE_4GPU"],
                RECIPES[suite]["GRAD_ACCUMULATION_STEPS_4GPU"],
            )
        assert flags["max_steps"] == RECIPES[suite]["MAX_STEPS"]  # steps do not depend on the GPU count


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPUS": "0,1,2", "GPUS_PER_RUN": "3"}, "GPUS_PER_RUN=3 does not divide it"),
        ({"GPUS": "0,1", "GPUS_PER_RUN": "4"}, "fewer devices than GPUS_PER_RUN=4"),
        ({"GPUS_PER_RUN": "0"}, "GPUS_PER_RUN must be a positive integer"),
        ({"BATCH_SIZE": "5"}, "BATCH_SIZE=5 x 1 process(es) does not divide it"),
        ({"GRAD_ACCUMULATION_STEPS": "3"}, "GRAD_ACCUMULATION_STEPS=3 x 1 process(es) does not divide it"),
        ({"RECIPE": "no-such-recipe"}, "RECIPE=no-such-recipe has no recipe for suite 'spatial'"),
    ],
)
def test_a_batch_the_recipe_cannot_keep_is_refused(tmp_path: Path, env: dict[str, str], message: str) -> None:
    proc = sweep("table1", tmp_path, DRY_RUN="1", SEEDS="42", **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "finetune.py" not in proc.stdout  # refused before planning anything


def test_environment_knobs_win_over_the_recipe(tmp_path: Path) -> None:
    commands = dry_table1(
        tmp_path,
        SUITES="goal long",
        STEPS_GOAL="100",
        LEARNING_RATE="5e-4",
        NUM_STEPS_BEFORE_DECAY="50",
        LORA_RANK="32",
        USE_PRO_VERSION="False",
        BATCH_SIZE="8",
    )
    for suite, command in commands.items():
        flags = flags_of(command)
        assert flags["max_steps"] == ("100" if suite == "goal" else RECIPES["long"]["MAX_STEPS"])
        assert (flags["learning_rate"], flags["num_steps_before_decay"], flags["lora_rank"]) == ("5e-4", "50", "32")
        assert flags["use_pro_version"] == "False" and flags["image_aug"] == RECIPES[suite]["IMAGE_AUG"]
        assert (flags["batch_size"], flags["grad_accumulation_steps"]) == ("8", "8")  # the global batch is kept
        assert all(command.count(f"--{k} ") == 1 for k in ("learning_rate", "lora_rank", "batch_size"))
    both = dry_table1(tmp_path, SUITES="object", BATCH_SIZE="8", GRAD_ACCUMULATION_STEPS="3")["object"]
    assert (flags_of(both)["batch_size"], flags_of(both)["grad_accumulation_steps"]) == ("8", "3")  # as asked
    accum = dry_table1(tmp_path, SUITES="object", GPUS="0,1,2,3", GPUS_PER_RUN="4", GRAD_ACCUMULATION_STEPS="4")
    assert (flags_of(accum["object"])["batch_size"], global_batch(accum["object"])) == ("4", 64)
    extra = dry_table1(tmp_path, SUITES="object", EXTRA_ARGS="--image_aug False")["object"]
    assert flags_of(extra)["image_aug"] == "False"  # EXTRA_ARGS comes last and wins
    plain = dry_table1(tmp_path, RECIPE="none", LEARNING_RATE="1e-4")
    for command in plain.values():  # finetune.py's defaults: only the knobs that are set
        flags = flags_of(command)
        assert flags["max_steps"] == "20000" and flags["learning_rate"] == "1e-4"
        assert not {"batch_size", "grad_accumulation_steps", "lora_rank", "num_steps_before_decay"} & set(flags)


def test_a_recipe_folder_of_ones_own(tmp_path: Path) -> None:
    mine = tmp_path / "my-recipes"
    mine.mkdir()
    text = (RECIPES_DIR / "goal.env").read_text()
    changed = text.replace("MAX_STEPS=50000", "MAX_STEPS=777").replace("LEARNING_RATE=2e-4", "LEARNING_RATE=3e-4")
    (mine / "goal.env").write_text(changed)
    command = dry_table1(tmp_path, SUITES="goal", RECIPE=str(mine))["goal"]
    assert (flags_of(command)["max_steps"], flags_of(command)["learning_rate"]) == ("777", "3e-4")
    proc = sweep("table1", tmp_path, DRY_RUN="1", SUITES="spatial", RECIPE=str(mine))
    assert proc.returncode == 2 and "spatial.env is missing" in proc.stderr
    # A 4-GPU variant of its own (8 x 4 GPUs x 2): as written for 4 GPUs, and its per-GPU batch caps other counts.
    (mine / "goal.env").write_text(
        changed.replace("BATCH_SIZE_4GPU=16", "BATCH_SIZE_4GPU=8").replace(
            "GRAD_ACCUMULATION_STEPS_4GPU=1", "GRAD_ACCUMULATION_STEPS_4GPU=2"
        )
    )
    for gpus, per_run, expected in (("0,1,2,3", "4", ("4", "8", "2")), ("0,1", "2", ("2", "8", "4"))):
        own = dry_table1(tmp_path, SUITES="goal", RECIPE=str(mine), GPUS=gpus, GPUS_PER_RUN=per_run)
        flags = flags_of(own["goal"])
        assert (flags["nproc-per-node"], flags["batch_size"], flags["grad_accumulation_steps"]) == expected
    (mine / "goal.env").write_text(changed.replace("GRAD_ACCUMULATION_STEPS_1GPU=16", "GRAD_ACCUMULATION_STEPS_1GPU=2"))
    proc = sweep("table1", tmp_path, DRY_RUN="1", SUITES="goal", RECIPE=str(mine))
    assert proc.returncode == 2 and "1-GPU variant does not make GLOBAL_BATCH=64" in proc.stderr
    (mine / "goal.env").write_text(changed.replace("LORA_RANK=64", "LORA_RANK=6 4"))
    proc = sweep("table1", tmp_path, DRY_RUN="1", SUITES="goal", RECIPE=str(mine))
    assert proc.returncode == 2 and "LORA_RANK is missing or not one word" in proc.stderr


def test_every_recipe_names_its_sources_and_the_published_number(tmp_path: Path) -> None:
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.env")) == ["goal", "long", "object", "spatial"]
    for suite, recipe in RECIPES.items():
        assert recipe["SUITE"] == suite
        for what in ("BATCH", "STEPS", "LR", "DECAY", "MODEL", "PUBLISHED"):
            assert len(recipe.get(f"SOURCE_{what}", "")) > 40, (suite, what)
        assert "838a36da195daf3e8b8a53520c8c7ce86231b6d9" in (RECIPES_DIR / f"{suite}.env").read_text()
        assert (recipe["PUBLISHED_MODEL"], recipe["PUBLISHED_SUCCESS"]) == ("VLA-Adapter-Pro", PUBLISHED_PRO[suite])
        assert f"{recipe['PUBLISHED_SUCCESS']}" in recipe["SOURCE_PUBLISHED"]
        assert recipe["MAX_STEPS"] in recipe["SOURCE_STEPS"] and "Not published" in recipe["SOURCE_STEPS"]
        for gpus in (1, 4):
            batch = int(recipe[f"BATCH_SIZE_{gpus}GPU"]) * gpus * int(recipe[f"GRAD_ACCUMULATION_STEPS_{gpus}GPU"])
            assert batch == int(recipe["GLOBAL_BATCH"]), (suite, gpus)
        assert int(recipe["NUM_STEPS_BEFORE_DECAY"]) > int(recipe["MAX_STEPS"])  # constant LR, as published runs had
    assert make_tables.published_row(RECIPES) == ["VLA-Adapter-Pro (published)", "99.6", "99.6", "98.2", "96.4", "98.5"]
    table = make_tables.recipe_table(RECIPES)
    assert [row[2] for row in table.rows] == ["20000", "5000", "50000", "60000"]
    assert table.rows[0][5:] == [
        "--batch_size 4 --grad_accumulation_steps 16",
        "--batch_size 16 --grad_accumulation_steps 1",
        "VLA-Adapter-Pro 99.6",
    ]
    assert any("issue #46" in note and "(Spatial)" in note for note in table.notes)
    (tmp_path / "bad.env").write_text("# a comment\nMAX STEPS 3\n")
    with pytest.raises(ValueError, match=r"bad\.env:2: not KEY=VALUE"):
        make_tables.load_recipe(tmp_path / "bad.env")


@pytest.mark.parametrize(
    "doc",
    ["craft_experiments/README.md", "docs/TRAINING_AND_EVALUATION.md", "docs/TRAINING_AND_EVALUATION.zh-CN.md"],
)
def test_the_documented_recipe_table_matches_the_recipes(doc: str) -> None:
    text = (REPO_ROOT / doc).read_text()
    rows = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith("| ") and "recipes/vla-adapter/" in line
    }
    for suite, recipe in RECIPES.items():
        row = next(line for name, line in rows.items() if name.startswith(make_tables.SUITES[suite]))
        for value in (recipe["GLOBAL_BATCH"], f"{int(recipe['MAX_STEPS']):,}", recipe["LEARNING_RATE"]):
            assert value in row, (doc, suite, value)
        assert f"{recipe['PUBLISHED_MODEL']} {recipe['PUBLISHED_SUCCESS']}" in row, (doc, suite)
        assert f"recipes/vla-adapter/{suite}.env" in row, (doc, suite)


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
    # The recipes are cited: Table 1's success rates get the published row they reproduce, recipes.md their sources.
    assert "| VLA-Adapter-Pro (published) | 99.6 | 99.6 | 98.2 | 96.4 | 98.5 |" in (out / "table1.md").read_text()
    assert "VLA-Adapter-Pro" not in (out / "table1_offline.md").read_text()
    assert "| Long | 64 | 60000 | 2e-4 |" in (out / "recipes.md").read_text()
    with_recipes = make_tables.build_tables(runs, recipes=RECIPES)["table1"]
    assert with_recipes.rows[:2] == t1.rows and with_recipes.rows[2][0] == "VLA-Adapter-Pro (published)"


def test_make_tables_needs_runs(tmp_path: Path) -> None:
    assert make_tables.load_runs(tmp_path / "missing") == []
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "make_tables.py"), "--run_root", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "no table1-/table2-/table4- runs" in proc.stderr
