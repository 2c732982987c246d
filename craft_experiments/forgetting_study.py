"""Results of the forgetting / few-shot study (`04_forgetting_fewshot/run_study.py`): tables, plots and a summary.

Reads every `study-<method>-<regime>-seed<seed>` run under a run root (`study_eval.json` + the run's
`metrics.jsonl`), the plan (`study_plan.json`) and the pretrained VLM's own score (`pretrained_vl.json`), and writes
Markdown + LaTeX tables (mean +- std over seeds, n), PNG plots and `study_summary.json` (per-seed differences of CRaFT
against the baseline). `make_tables.py` calls it when a run root holds study runs.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from make_tables import MISSING, Table, cell

from prismatic.training.metrics import RET_GRAD_STEP, read_metrics

NAME = re.compile(r"^study-(?P<method>.+)-(?P<regime>full|\d+shot)-seed(?P<seed>\d+)$")
LABELS = {
    "baseline": "Baseline",
    "craft": "CRaFT",
    "no_projection": "CRaFT w/o projection",
    "no_dual": "CRaFT w/o dual (fixed lambda)",
    "aq_only": "CRaFT, AQ-only anchor",
    "raw_only": "CRaFT, raw-only anchor",
    "craft_f0.25": "CRaFT, retention fraction 0.25",
    "craft_cache": "CRaFT, cached anchor features",
    "craft_cache_f0.25": "CRaFT, cache + fraction 0.25",
    "craft_cache_slack0.5": "CRaFT, cache + slack margin 0.5",
}
CHEAP_METHODS = ("craft_f0.25", "craft_cache", "craft_cache_f0.25", "craft_cache_slack0.5")
REGIME_LABELS = {"full": "all episodes", "10shot": "10-shot", "5shot": "5-shot"}


class VLHeldOutSet:
    """The pretrained VLM's held-out questions, rebuilt from what its folder records, and their scoring."""

    def __init__(self, scene_set: Any, tokenizer: Any) -> None:
        self.scene_set, self.tokenizer = scene_set, tokenizer

    @classmethod
    def from_vlm_folder(cls, folder: Path, bundle: Path) -> VLHeldOutSet:
        from prismatic.models.tokenizer import load_tokenizer
        from prismatic.training.vl_pretrain import heldout_set_from_record

        return cls(heldout_set_from_record(folder), load_tokenizer(bundle))

    def evaluate(self, vlm: Any) -> dict[str, Any]:
        from prismatic.training.vl_pretrain import evaluate_vl

        return evaluate_vl(vlm, self.scene_set, self.tokenizer, batch_size=16)


@dataclass
class StudyRun:
    name: str
    method: str
    regime: str
    seed: int
    result: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def logged(self, metric: str) -> list[float]:
        """`metric` at every step that logged it."""
        return [row[metric] for row in self.rows if row.get(metric) is not None]

    def final(self, metric: str) -> float | None:
        """Mean of `metric` over the last fifth of the steps that logged it."""
        values = self.logged(metric)
        if not values:
            return None
        tail = values[-max(1, len(values) // 5) :]
        return sum(tail) / len(tail)

    def largest(self, metric: str) -> float | None:
        """The largest value `metric` took over training."""
        return max(self.logged(metric), default=None)


def load_study_runs(root: Path) -> list[StudyRun]:
    runs = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []:
        match = NAME.match(folder.name)
        if not match or match["method"] == "pilot" or not (folder / "study_eval.json").is_file():
            continue
        runs.append(
            StudyRun(
                folder.name,
                match["method"],
                match["regime"],
                int(match["seed"]),
                json.loads((folder / "study_eval.json").read_text()),
                read_metrics(folder / "metrics.jsonl"),
            )
        )
    return runs


def middle_layer(cka: dict[str, float]) -> str:
    layers = sorted(cka, key=int)
    return layers[len(layers) // 2]


METRICS: dict[str, tuple[str, bool]] = {  # key -> (column header, shown as a percentage)
    "vl_exact": ("VL exact acc. (%)", True),
    "vl_token": ("VL token acc. (%)", True),
    "l1_trained": ("Action L1, held-out episodes", False),
    "l1_unseen": ("Action L1, unseen tasks", False),
    "cka_raw_mid": ("CKA raw @ middle layer", False),
    "cka_aq_last": ("CKA AQ @ last layer", False),
    "retention_over_budget": ("L_ret / epsilon (end)", False),
    "retention_max_over_budget": ("L_ret / epsilon (max)", False),
}


def metric(run: StudyRun, key: str, budget: float) -> float | None:
    result = run.result
    if key == "vl_exact":
        return result["vl"]["exact_accuracy"]
    if key == "vl_token":
        return result["vl"]["token_accuracy"]
    if key == "l1_trained":
        return result["trained_tasks"]["action_l1"]
    if key == "l1_unseen":
        return result["unseen_tasks"]["action_l1"]
    if key == "cka_raw_mid":
        raw = result["trained_tasks"]["cka"]["raw"]
        return raw[middle_layer(raw)]
    if key == "cka_aq_last":
        queries = result["trained_tasks"]["cka"]["action_query"]
        return queries[max(queries, key=int)]
    if key == "retention_over_budget":
        value = run.final("CRaFT/Retention Loss")
        return value / budget if value is not None else None
    if key == "retention_max_over_budget":
        value = run.largest("CRaFT/Retention Loss")
        return value / budget if value is not None else None
    raise KeyError(key)


def _row(label: str, runs: list[StudyRun], budget: float, seeds: int) -> list[str]:
    cells = [label]
    for key, (_, percent) in METRICS.items():
        values = [value for run in runs if (value := metric(run, key, budget)) is not None]
        cells.append(cell(values, percent, seeds))
    return cells


def study_tables(runs: list[StudyRun], plan: dict[str, Any], pretrained: dict[str, Any] | None) -> dict[str, Table]:
    budget = plan["retention_budget"]
    seeds = len({run.seed for run in runs}) or 1
    header = ["Method", *(name for name, _ in METRICS.values())]
    notes = [
        f"epsilon = {budget:.4g}, eta = {plan['dual_lr']:.4g}, fixed lambda (w/o dual) = {plan['fixed_lambda']:.4g}: "
        f"{plan['rule']} (pilot drift D = {plan['pilot']['retention_drift']:.4g})",
        "mean ± std over seeds (n); action L1 on normalised actions; CKA against the pretrained VLM on held-out "
        "frames of the trained tasks; VL = the pretrained VLM's held-out questions, answered by the fine-tuned VLM",
    ]
    if pretrained is not None:
        notes.insert(
            0,
            f"pretrained VLM before fine-tuning: VL exact {100 * pretrained['exact_accuracy']:.1f} %, token "
            f"{100 * pretrained['token_accuracy']:.1f} %; chance (majority answer) "
            f"{100 * statistics.fmean(pretrained['chance'].values()):.1f} % averaged over question families",
        )
    tables = {}
    body = []
    for regime in REGIME_LABELS:
        for method in ("baseline", "craft"):
            members = [run for run in runs if run.method == method and run.regime == regime]
            if members:
                body.append(_row(f"{LABELS[method]}, {REGIME_LABELS[regime]}", members, budget, seeds))
    tables["study_main"] = Table("Forgetting and few-shot: baseline vs CRaFT", header, body, notes)
    for key, methods, title in (
        ("study_ablations", ["baseline", "craft", "no_projection", "no_dual", "aq_only", "raw_only"], "Ablations"),
        ("study_cheap_modes", ["baseline", "craft", *CHEAP_METHODS], "Cheaper modes"),
    ):
        rows = []
        for method in methods:
            members = [run for run in runs if run.method == method and run.regime == "full"]
            rows.append(
                _row(LABELS[method], members, budget, seeds) if members else [LABELS[method], *[MISSING] * len(METRICS)]
            )
        extra = retention_gradient_notes(runs, methods) if key == "study_cheap_modes" else []
        tables[key] = Table(f"{title} (all episodes)", header, rows, [*notes[-2:], *extra])
    return tables


def retention_gradient_share(run: StudyRun) -> float | None:
    """Fraction of a run's steps that computed the retention gradient (below 1 only in a slack mode)."""
    flags = run.logged(RET_GRAD_STEP)
    return sum(flags) / len(flags) if flags else None


def retention_gradient_notes(runs: list[StudyRun], methods: list[str]) -> list[str]:
    """What a slack mode saved: its share of steps that still computed g_ret (the rest cost about a baseline step)."""
    lines = []
    for method in methods:
        shares = [
            share
            for run in runs
            if run.method == method and run.regime == "full" and (share := retention_gradient_share(run)) is not None
        ]
        if shares and min(shares) < 1.0:
            lines.append(
                f"{LABELS[method]}: {100 * statistics.fmean(shares):.0f} % of steps computed the retention gradient "
                f"(per seed: {', '.join(f'{100 * share:.0f} %' for share in shares)})"
            )
    return lines


def paired_differences(
    runs: list[StudyRun], method: str, budget: float, reference: str = "baseline"
) -> dict[str, dict[str, Any]]:
    """Per regime and metric: `method` minus `reference` of the same seed, with its mean and spread."""
    out: dict[str, dict[str, Any]] = {}
    for regime in REGIME_LABELS:
        by_seed = {
            (run.method, run.seed): run for run in runs if run.regime == regime and run.method in (reference, method)
        }
        seeds = sorted({seed for kind, seed in by_seed if kind == method and (reference, seed) in by_seed})
        if not seeds:
            continue
        out[regime] = {}
        for key in ("vl_exact", "l1_trained", "l1_unseen", "cka_raw_mid"):
            deltas = [
                metric(by_seed[(method, seed)], key, budget) - metric(by_seed[(reference, seed)], key, budget)
                for seed in seeds
            ]
            out[regime][key] = {
                "per_seed": deltas,
                "mean": statistics.fmean(deltas),
                "std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
                "same_sign_in_every_seed": all(d > 0 for d in deltas) or all(d < 0 for d in deltas),
            }
    return out


def plot_study(runs: list[StudyRun], plan: dict[str, Any], pretrained: dict[str, Any] | None, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"baseline": "tab:blue", "craft": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for method in ("baseline", "craft"):
        for index, run in enumerate(r for r in runs if r.method == method and r.regime == "full"):
            points = [(row["step"], row["CRaFT/Retention Loss"]) for row in run.rows if "CRaFT/Retention Loss" in row]
            if points:
                label = LABELS[method] if index == 0 else None
                ax.plot(*zip(*points, strict=True), color=colours[method], alpha=0.7, label=label)
    ax.axhline(plan["retention_budget"], color="gray", linestyle="--", label="budget epsilon")
    ax.set(title="retention loss over training (all episodes)", xlabel="step", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1]
    width = 0.38
    regimes = [regime for regime in REGIME_LABELS if any(run.regime == regime for run in runs)]
    for offset, method in enumerate(("baseline", "craft")):
        means, errors = [], []
        for regime in regimes:
            values = [
                100 * run.result["vl"]["exact_accuracy"] for run in runs if (run.method, run.regime) == (method, regime)
            ]
            means.append(statistics.fmean(values) if values else 0.0)
            errors.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        xs = [index + (offset - 0.5) * width for index in range(len(regimes))]
        ax.bar(xs, means, width, yerr=errors, color=colours[method], label=LABELS[method])
    if pretrained is not None:
        ax.axhline(100 * pretrained["exact_accuracy"], color="black", linestyle="--", label="pretrained VLM")
        ax.axhline(100 * statistics.fmean(pretrained["chance"].values()), color="gray", linestyle=":", label="chance")
    ax.set_xticks(range(len(regimes)), [REGIME_LABELS[regime] for regime in regimes])
    ax.set(title="VL retention: held-out question accuracy", ylabel="exact answers (%)")
    ax.legend(fontsize=8)
    ax = axes[2]
    for method in ("baseline", "craft"):
        for index, run in enumerate(r for r in runs if r.method == method and r.regime == "full"):
            raw = run.result["trained_tasks"]["cka"]["raw"]
            layers = sorted(raw, key=int)
            label = LABELS[method] if index == 0 else None
            ax.plot(
                [int(layer) for layer in layers],
                [raw[layer] for layer in layers],
                color=colours[method],
                alpha=0.7,
                label=label,
            )
    ax.set(title="CKA vs the pretrained VLM (vision tokens)", xlabel="LLM layer", ylabel="linear CKA")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "study_forgetting.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def write_study_results(root: Path, out: Path) -> list[Path]:
    """Tables, plots and the paired summary of the study under `root`, into `out`."""
    runs = load_study_runs(root)
    if not runs:
        raise SystemExit(f"no evaluated study runs under {root}")
    plan = json.loads((root / "study_plan.json").read_text())
    pretrained_file = root / "pretrained_vl.json"
    pretrained = json.loads(pretrained_file.read_text()) if pretrained_file.is_file() else None
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in study_tables(runs, plan, pretrained).items():
        (out / f"{name}.md").write_text(table.markdown())
        (out / f"{name}.tex").write_text(table.latex())
        written += [out / f"{name}.md", out / f"{name}.tex"]
    summary = {
        "plan": plan,
        "pretrained_vl": pretrained,
        "runs": len(runs),
        "craft_minus_baseline": paired_differences(runs, "craft", plan["retention_budget"]),
        "cheap_minus_baseline": {
            method: paired_differences(runs, method, plan["retention_budget"]).get("full") for method in CHEAP_METHODS
        },
        "cheap_minus_craft": {
            method: paired_differences(runs, method, plan["retention_budget"], reference="craft").get("full")
            for method in CHEAP_METHODS
        },
    }
    (out / "study_summary.json").write_text(json.dumps(summary, indent=2))
    written.append(out / "study_summary.json")
    written += plot_study(runs, plan, pretrained, out)
    return written
