"""Forgetting and few-shot study of CRaFT on a laptop: policies fine-tuned from a tiny VLM that knows something.

    python craft_experiments/04_forgetting_fewshot/run_study.py                 # the full study (~1 h, 2 cores)
    python craft_experiments/04_forgetting_fewshot/run_study.py --smoke True    # the whole pipeline in ~5 min
    python craft_experiments/make_tables.py --run_root runs/study               # tables and plots again

Start: the tiny Prismatic VLM pretrained on questions about the synthetic scenes (`vla-scripts/pretrain_tiny_vlm.py`;
built here when missing). Data: synthetic LIBERO-Spatial, tasks 0-7 for training (the dataset's last 10 % of
episodes held out: its order is hashed, so a task loses 0-4 of its 20) and tasks 8-9 never trained on. Runs:
baseline and CRaFT with all training episodes, 10-shot and 5-shot; CRaFT's Table 4 ablations and its cheaper modes
with all episodes; every one with seeds 1, 2, 3. Measured after training:

(a) VL retention: the held-out question accuracy of the fine-tuned VLM (with its LoRA). Its LM head is tied to the
    frozen token embeddings and never used by the policy, so this measures what the representation kept;
(b) action L1 on held-out episodes of the trained tasks and on the unseen tasks;
(c) representation drift: linear CKA per LLM layer against the pretrained VLM;
(d) the retention loss against its budget over training (baselines measure it every 5 steps without using it).

Everything that could be tuned is fixed before any result is seen and written to `<run_root>/study_plan.json` first:
steps, batch, learning rate, LoRA rank, seeds, and CRaFT's budget and dual step, which follow one stated rule from a
pilot baseline (seed 0, not a study seed) whose only output used is its retention drift D: epsilon = 0.2 D,
eta = 0.25 / D, and for the fixed-lambda ablation lambda = L_act / D (the pilot's final action loss over D). A rerun
reuses the plan, skips finished runs and evaluations, and refuses a plan that changed; methods (`--ablations`,
`--cheap_modes`) may be added later, and each addition is written into the plan with its date.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # craft_experiments/, for forgetting_study

from prismatic.util.atomic_io import atomic_write_json  # noqa: E402
from prismatic.util.cli import cli_entry, flag_values  # noqa: E402 (after the path setup, like the sweeps' helpers)

DATASET = "libero_spatial_no_noops"
TRAIN_TASKS = list(range(8))
UNSEEN_TASKS = [8, 9]
REGIMES = {"full": None, "10shot": 10, "5shot": 5}  # --n_shot_episodes
ABLATIONS = {
    "no_projection": {"craft_enable_projection": False},
    "no_dual": {"craft_enable_dual": False},  # + the plan's fixed lambda
    "aq_only": {"craft_anchor_type": "aq_only"},
    "raw_only": {"craft_anchor_type": "raw_only"},
}
CHEAP = {
    "craft_f0.25": {"craft_retention_fraction": 0.25},
    "craft_cache": {"craft_cache_anchor_features": True},
    "craft_cache_f0.25": {"craft_cache_anchor_features": True, "craft_retention_fraction": 0.25},
    # margin fixed at 0.5 (halfway to the budget) before any slack run
    "craft_cache_slack0.5": {"craft_cache_anchor_features": True, "craft_slack_margin": 0.5},
}
RUN_SELECTION = ("ablations", "cheap_modes")  # which methods to run: not settings of the plan (see `make_plan`)
BASELINE_MEASURE_FREQ = 5


@dataclass
class StudyConfig:
    run_root: Path = REPO / "runs/study"
    vlm_path: Path = REPO / "pretrained_models/prism-qwen25-tiny-dinosiglip-224px-vl"  # the pretrained tiny VLM
    config_file_path: Path = REPO / "pretrained_models/configs-tiny"
    data_root_dir: Path = REPO / "data/study"  # <root>/train (tasks 0-7) and <root>/unseen (tasks 8-9)
    smoke: bool = False  # a few steps on little data, 1 seed: checks the pipeline, says nothing about CRaFT
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS))
    cheap_modes: list[str] = field(default_factory=lambda: list(CHEAP))
    steps: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    lora_rank: int = 16
    episodes_per_task: int = 20  # per training task; a tenth held out, so 10-shot still has enough
    unseen_episodes_per_task: int = 8
    heldout_episode_fraction: float = 0.1
    eval_max_samples: int = 256  # frames per offline evaluation
    pilot_seed: int = 0


def smoke_overrides(cfg: StudyConfig) -> StudyConfig:
    """The smoke study: the same code on a few steps and little data (minutes)."""
    return StudyConfig(
        **{
            **asdict(cfg),
            "run_root": cfg.run_root.with_name(cfg.run_root.name + "-smoke"),
            "vlm_path": cfg.vlm_path.with_name(cfg.vlm_path.name + "-smoke"),
            "data_root_dir": cfg.data_root_dir.with_name(cfg.data_root_dir.name + "-smoke"),
            "seeds": cfg.seeds[:1],
            "regimes": ["full", "5shot"],
            "ablations": ["no_dual"],
            "cheap_modes": ["craft_cache_f0.25"],
            "steps": 6,
            "batch_size": 4,
            "episodes_per_task": 8,
            "unseen_episodes_per_task": 2,
            "heldout_episode_fraction": 0.1,
            "eval_max_samples": 24,
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# assets
# ---------------------------------------------------------------------------------------------------------------
def run_command(args: list[Any], log: Path | None = None) -> None:
    """Run a repository script with this interpreter; its output goes to `log` (or through); fail loudly."""
    command = [sys.executable, *map(str, args)]
    env_note = f" (log: {log})" if log else ""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            proc = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, check=False)
    else:
        proc = subprocess.run(command, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(
            f"study: `{' '.join(map(str, args[:2]))} ...` failed with exit code {proc.returncode}{env_note}"
        )


def build_assets(cfg: StudyConfig) -> None:
    if not (cfg.vlm_path / "config.json").is_file():
        print(f"[study] pretraining the tiny VLM -> {cfg.vlm_path}", flush=True)
        flags = ["--vlm_dir", cfg.vlm_path, "--bundle_dir", cfg.config_file_path]
        if cfg.smoke:
            flags += ["--steps", 20, "--train_scenes", 48, "--heldout_scenes", 24, "--batch_size", 8]
        run_command([REPO / "vla-scripts/pretrain_tiny_vlm.py", *flags])
    for split, tasks, episodes in (
        ("train", TRAIN_TASKS, cfg.episodes_per_task),
        ("unseen", UNSEEN_TASKS, cfg.unseen_episodes_per_task),
    ):
        run_command(
            [
                REPO / "vla-scripts/make_synthetic_libero.py",
                *("--data_root_dir", cfg.data_root_dir / split, "--suites", f"[{DATASET}]"),
                *("--task_ids", json.dumps(tasks), "--episodes_per_task", episodes, "--seed", 0),
            ]
        )


def check_shots(cfg: StudyConfig) -> None:
    """The held-out split takes the last episodes of the (hash-shuffled) dataset, so tasks lose unequal numbers:
    stop before any training if a task keeps fewer training episodes than the largest few-shot regime needs."""
    from collections import Counter

    from prismatic.vla.datasets.registry import resolve_mixture
    from prismatic.vla.datasets.rlds.episodes import load_episode_table, open_builder, train_heldout_split

    config = resolve_mixture(DATASET)[0][0]
    table = load_episode_table(open_builder(cfg.data_root_dir / "train", config.name), config)
    train, heldout = train_heldout_split(table.num_episodes, cfg.heldout_episode_fraction)
    per_task = Counter(table.instructions[episode] for episode in train)
    shots = max((REGIMES[regime] or 0) for regime in cfg.regimes)
    if len(per_task) != len(TRAIN_TASKS) or min(per_task.values()) < shots:
        raise SystemExit(
            f"study: with --episodes_per_task {cfg.episodes_per_task} and --heldout_episode_fraction "
            f"{cfg.heldout_episode_fraction}, a training task keeps {min(per_task.values())} episodes, fewer than "
            f"{shots}-shot needs; raise --episodes_per_task"
        )
    print(
        f"[study] {len(train)} training / {len(heldout)} held-out episodes; per training task "
        f"{min(per_task.values())}-{max(per_task.values())} kept for training",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------------------------------------------
def common_flags(cfg: StudyConfig) -> dict[str, Any]:
    return {
        "vlm_path": cfg.vlm_path,
        "config_file_path": cfg.config_file_path,
        "data_root_dir": cfg.data_root_dir / "train",
        "dataset_name": DATASET,
        "run_root_dir": cfg.run_root,
        "max_steps": cfg.steps,
        "save_freq": cfg.steps,
        "batch_size": cfg.batch_size,
        "grad_accumulation_steps": 1,
        "learning_rate": cfg.learning_rate,
        "lora_rank": cfg.lora_rank,
        "image_aug": False,  # every run alike, so that the anchor-feature cache is allowed and comparable
        "heldout_episode_fraction": cfg.heldout_episode_fraction,
        "shuffle_buffer_size": 2000,
        "console_log_freq": 50,
    }


def run_name(method: str, regime: str, seed: int) -> str:
    return f"study-{method}-{regime}-seed{seed}"


def method_flags(method: str, plan: dict[str, Any]) -> dict[str, Any]:
    craft = {
        "use_craft": True,
        "craft_retention_budget": plan["retention_budget"],
        "craft_dual_lr": plan["dual_lr"],
    }
    if method == "baseline":
        return {
            "craft_measure_freq": BASELINE_MEASURE_FREQ,
            "craft_retention_budget": plan["retention_budget"],
        }
    if method == "craft":
        return craft
    if method in ABLATIONS:
        extra = dict(ABLATIONS[method])
        if method == "no_dual":
            extra["craft_fixed_lambda"] = plan["fixed_lambda"]
        return {**craft, **extra}
    if method in CHEAP:
        return {**craft, **CHEAP[method]}
    raise ValueError(f"unknown method {method!r}")


def train_run(cfg: StudyConfig, name: str, flags: dict[str, Any], seed: int, shots: int | None) -> Path:
    """One fine-tune (skipped when its final checkpoint exists); returns the checkpoint."""
    checkpoint = cfg.run_root / f"{name}--{cfg.steps}_chkpt"
    if (checkpoint / "training_state.pt").is_file():
        return checkpoint
    partial = cfg.run_root / name
    if partial.exists():  # an interrupted attempt that never saved: start it again
        partial.rename(partial.with_name(f"{name}.failed-{int(time.time())}"))
    args = {**common_flags(cfg), **flags, "run_id_override": name, "seed": seed}
    if shots is not None:
        args["n_shot_episodes"] = shots
    cli = [item for key, value in args.items() for item in (f"--{key}", value)]
    started = time.perf_counter()
    run_command([REPO / "vla-scripts/finetune.py", *cli], log=cfg.run_root / "logs" / f"{name}.log")
    print(f"[study] trained {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return checkpoint


def make_plan(cfg: StudyConfig) -> dict[str, Any]:
    """Everything fixed before any result: read back if it exists (and must then be unchanged), else derived from a
    pilot baseline's retention drift and written first."""
    plan_file = cfg.run_root / "study_plan.json"
    settings = flag_values(cfg)
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        changed = sorted(
            key for key in settings if key not in RUN_SELECTION and plan["settings"].get(key) != settings[key]
        )
        if changed:
            raise SystemExit(
                f"study: {plan_file} was planned with other settings ({', '.join(changed)}); use another --run_root "
                "or restore them"
            )
        return record_added_methods(plan_file, plan, settings)
    from prismatic.training.metrics import read_metrics

    pilot = run_name("pilot", "full", cfg.pilot_seed)
    train_run(cfg, pilot, {"craft_measure_freq": BASELINE_MEASURE_FREQ}, cfg.pilot_seed, None)
    rows = read_metrics(cfg.run_root / pilot / "metrics.jsonl")
    retention = [row["CRaFT/Retention Loss"] for row in rows if "CRaFT/Retention Loss" in row]
    tail = retention[-max(1, len(retention) // 5) :]
    drift = sum(tail) / len(tail)
    action_tail = [row["VLA Train/Loss"] for row in rows[-max(1, len(rows) // 5) :]]
    action_loss = sum(action_tail) / len(action_tail)
    if not (math.isfinite(drift) and drift > 0):
        raise SystemExit(f"study: the pilot's retention drift is {drift}; cannot set a budget from it")
    plan = {
        "settings": settings,
        "pilot": {"run": pilot, "retention_drift": drift, "action_loss": action_loss},
        "rule": "epsilon = 0.2 D, eta = 0.25 / D, fixed lambda (no_dual) = L_act / D; D = the pilot's mean retention "
        "loss over its last fifth of steps, L_act its mean action loss there",
        "retention_budget": 0.2 * drift,
        "dual_lr": 0.25 / drift,
        "fixed_lambda": action_loss / drift,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(plan_file, plan)
    return plan


def record_added_methods(plan_file: Path, plan: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Methods beyond the plan's may join a study later: the plan's budget, steps and seeds do not depend on which
    methods run, and every run uses them. Each addition is written into the plan with its date, so the tables' readers
    can tell what was planned first from what came after."""
    additions = plan.get("methods_added", [])
    added = {}
    for key in RUN_SELECTION:
        known = {*plan["settings"][key], *(method for entry in additions for method in entry.get(key, []))}
        if new := [method for method in settings[key] if method not in known]:
            added[key] = new
    if added:
        plan["methods_added"] = [*additions, {**added, "written": time.strftime("%Y-%m-%d %H:%M:%S")}]
        atomic_write_json(plan_file, plan)
    return plan


def planned_runs(cfg: StudyConfig) -> list[tuple[str, str, int]]:
    """(method, regime, seed) of every study run, in the order they are trained: the baseline vs CRaFT comparison
    for every seed first, then the cheaper modes, then the ablations (each group complete over seeds before the next,
    so that a study cut short still has whole groups)."""
    runs = [(method, regime, seed) for seed in cfg.seeds for regime in cfg.regimes for method in ("baseline", "craft")]
    runs += [(method, "full", seed) for method in cfg.cheap_modes for seed in cfg.seeds]
    return runs + [(method, "full", seed) for method in cfg.ablations for seed in cfg.seeds]


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------
def evaluate_run(cfg: StudyConfig, checkpoint: Path, vl_set: Any) -> dict[str, Any]:
    """(a)-(c) of one fine-tuned checkpoint; (d) comes from its metrics.jsonl."""
    import torch

    from craft import CRaFTConfig
    from prismatic.eval.offline import OfflineSettings, base_vlm_for, evaluate_offline
    from prismatic.models.loaders import load_policy

    run_cfg = json.loads((checkpoint / "config.json").read_text())["vla_adapter"]
    loaded = load_policy(checkpoint)
    torch.manual_seed(0)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "lora": run_cfg.get("lora")}
    result["vl"] = vl_set.evaluate(loaded.policy.vlm)
    base = base_vlm_for(loaded, None)
    craft = CRaFTConfig()
    for split, root, fraction in (
        ("trained_tasks", cfg.data_root_dir / "train", cfg.heldout_episode_fraction),
        ("unseen_tasks", cfg.data_root_dir / "unseen", 0.5),
    ):
        settings = OfflineSettings(root, DATASET, fraction, max_samples=cfg.eval_max_samples, batch_size=8)
        offline = evaluate_offline(loaded, base, settings, craft, cfg.config_file_path)
        result[split] = {
            "action_l1": offline["action_l1"]["normalized/all"],
            "action_l1_unnormalized": offline["action_l1"]["unnormalized/all"],
            "num_samples": offline["num_samples"],
            "retention_loss": offline["retention_loss"],
            "cka": offline["cka"],
        }
    return result


def main_study(cfg: StudyConfig) -> None:
    from forgetting_study import VLHeldOutSet, write_study_results

    cfg.run_root.mkdir(parents=True, exist_ok=True)
    build_assets(cfg)
    check_shots(cfg)
    plan = make_plan(cfg)
    print(
        f"[study] plan: epsilon {plan['retention_budget']:.4g}, eta {plan['dual_lr']:.4g}, fixed lambda "
        f"{plan['fixed_lambda']:.4g} (pilot drift {plan['pilot']['retention_drift']:.4g})",
        flush=True,
    )
    vl_set = VLHeldOutSet.from_vlm_folder(cfg.vlm_path, cfg.config_file_path)
    pretrained = cfg.run_root / "pretrained_vl.json"
    if not pretrained.is_file():
        from prismatic.models.loaders import load_prismatic_vlm

        atomic_write_json(pretrained, vl_set.evaluate(load_prismatic_vlm(cfg.vlm_path, num_images=2)))
    for method, regime, seed in planned_runs(cfg):
        name = run_name(method, regime, seed)
        checkpoint = train_run(cfg, name, method_flags(method, plan), seed, REGIMES[regime])
        output = cfg.run_root / name / "study_eval.json"
        if not output.is_file():
            started = time.perf_counter()
            result = {"method": method, "regime": regime, "seed": seed, **evaluate_run(cfg, checkpoint, vl_set)}
            result["eval_seconds"] = round(time.perf_counter() - started, 1)
            atomic_write_json(output, result)
            print(
                f"[study] {name}: VL exact {result['vl']['exact_accuracy']:.3f}, L1 trained "
                f"{result['trained_tasks']['action_l1']:.4f}, unseen {result['unseen_tasks']['action_l1']:.4f}",
                flush=True,
            )
    written = write_study_results(cfg.run_root, cfg.run_root / "results")
    print(f"[study] tables and plots: {', '.join(str(path) for path in written)}", flush=True)


@cli_entry
def main(cfg: StudyConfig) -> None:
    if cfg.smoke:
        cfg = smoke_overrides(cfg)
    unknown = [r for r in cfg.regimes if r not in REGIMES] + [
        m for m in [*cfg.ablations, *cfg.cheap_modes] if m not in {**ABLATIONS, **CHEAP}
    ]
    if unknown:
        raise SystemExit(f"study: unknown regimes/methods {unknown}")
    main_study(cfg)


if __name__ == "__main__":
    main()
