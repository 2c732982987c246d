"""Tables and plots of the paper sweeps, from the run folders they leave.

    python craft_experiments/make_tables.py --run_root runs    # writes runs/results/

Reads every `table1-*`, `table2-*` and `table4-*` run under `--run_root` (`<run>/<run>/metrics.jsonl`,
`<run>/eval_<suite>/eval_results.json`, `<run>/offline_eval.json`) and writes, for each table, Markdown and LaTeX with
mean +- std over seeds and the number of seeds found (missing cells are marked and listed), plus PNG plots: retention
loss against the budget, lambda, conflict ratio (baseline vs CRaFT), action loss, and success rates per suite.
The training recipes of the sweeps (`craft_experiments/recipes/<recipe>/<suite>.env`) are cited: Table 1's success
rates get the published row each recipe reproduces, and `recipes.md` lists the recipes with their sources.
A run root of the forgetting / few-shot study (`04_forgetting_fewshot/run_study.py`, with its `study_plan.json`)
gets that study's tables and plots (`forgetting_study.py`).
"""

import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml

from prismatic.training.metrics import read_metrics
from prismatic.util.cli import cli_entry

SUITES = {"spatial": "Spatial", "object": "Object", "goal": "Goal", "long": "Long"}
METHODS = {"baseline": "Baseline", "craft": "CRaFT"}
ABLATIONS = {
    "full": "CRaFT (Full)",
    "no_projection": "w/o Projection",
    "no_dual": "w/o Dual",
    "aq_only": "AQ Only",
    "raw_only": "Raw Only",
}
NAME = re.compile(r"^table(?P<table>[124])-(?P<key>.+)-seed(?P<seed>\d+)$")
MISSING = "—"
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class MakeTablesConfig:
    run_root: Path = Path("runs")
    out_dir: Path | None = None  # default: <run_root>/results, beside the (git-ignored) runs it summarises
    budget: float = 0.1  # epsilon drawn on the retention plot when runs do not record it
    recipe: str = "vla-adapter"  # the sweeps' RECIPE: a folder of recipes/ or a path; none: cite no recipe


@dataclass
class Run:
    name: str
    table: str
    key: str  # "spatial-craft", "5shot-baseline", "no_dual"
    seed: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    success_rate: float | None = None
    offline: dict[str, Any] | None = None
    budget: float | None = None

    def final(self, metric: str, fraction: float = 0.1) -> float | None:
        """Mean of `metric` over the last `fraction` of the steps that recorded it."""
        values = [r[metric] for r in self.rows if metric in r and r[metric] is not None and math.isfinite(r[metric])]
        if not values:
            return None
        tail = values[-max(1, int(len(values) * fraction)) :]
        return sum(tail) / len(tail)


def load_runs(root: Path) -> list[Run]:
    runs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        match = NAME.match(folder.name)
        if not match:
            continue
        run = Run(folder.name, match["table"], match["key"], int(match["seed"]))
        run.rows = read_metrics(folder / folder.name / "metrics.jsonl")  # one row per step, even after a resume
        config = folder / folder.name / "finetune_config.yaml"
        if config.is_file():
            budget = (yaml.safe_load(config.read_text()) or {}).get("craft_retention_budget")
            run.budget = float(budget) if budget is not None else None
        for results in folder.glob("eval_*/eval_results.json"):
            run.success_rate = json.loads(results.read_text())["total"]["success_rate"]
        if (folder / "offline_eval.json").is_file():
            run.offline = json.loads((folder / "offline_eval.json").read_text())
        runs.append(run)
    return runs


def cell(values: list[float], percent: bool, expected: int) -> str:
    """mean +- std (n) of the seeds found; `—` when none."""
    if not values:
        return MISSING
    scale = 100.0 if percent else 1.0
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    digits = 1 if percent else 4
    count = f" ({len(values)}/{expected})" if len(values) != expected else f" ({len(values)})"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{count}"


def metric_of(run: Run, metric: str) -> float | None:
    if metric == "success":
        return run.success_rate
    if metric == "heldout_l1":
        return run.offline["action_l1"]["normalized/all"] if run.offline else None
    if metric == "cka_raw":
        return list(run.offline["cka"]["raw"].values())[-1] if run.offline else None
    if metric == "retention":
        return run.final("CRaFT/Retention Loss")
    if metric == "conflict":
        return run.final("CRaFT/Conflict Ratio")
    if metric == "train_l1":
        return run.final("VLA Train/Loss")
    raise KeyError(metric)


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        def esc(text: str) -> str:
            return text.replace("±", r"$\pm$").replace("%", r"\%").replace("_", r"\_").replace(MISSING, "--")

        cols = "l" + "c" * (len(self.header) - 1)
        body = "\n".join(" & ".join(esc(c) for c in row) + r" \\" for row in self.rows)
        return (
            f"% {self.title}\n\\begin{{tabular}}{{{cols}}}\n\\toprule\n"
            + " & ".join(esc(h) for h in self.header)
            + r" \\"
            + "\n\\midrule\n"
            + body
            + "\n\\bottomrule\n\\end{tabular}\n"
        )


def load_recipe(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of a recipe file (the format common.sh reads: `#` comments, no quotes)."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not re.fullmatch(r"[A-Z0-9_]+", key):
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {line}")
        values[key] = value
    return values


def load_recipes(recipe: str = "vla-adapter") -> dict[str, dict[str, str]]:
    """The recipes of a RECIPE (a folder of `recipes/` or a path), by short suite name in table order."""
    if recipe == "none":
        return {}
    folder = Path(recipe) if "/" in recipe else RECIPES_DIR / recipe
    found = {path.stem: load_recipe(path) for path in folder.glob("*.env")}
    if not found:
        raise FileNotFoundError(f"no <suite>.env recipes in {folder}")
    return {suite: found[suite] for suite in [*SUITES, *sorted(set(found) - set(SUITES))] if suite in found}


def _variant(recipe: dict[str, str], gpus: int) -> str:
    """The finetune.py batch flags of a recipe's 1-GPU or 4-GPU variant."""
    batch, accum = recipe[f"BATCH_SIZE_{gpus}GPU"], recipe[f"GRAD_ACCUMULATION_STEPS_{gpus}GPU"]
    return f"--batch_size {batch} --grad_accumulation_steps {accum}"


def recipe_table(recipes: dict[str, dict[str, str]]) -> Table:
    """Suite | recipe | 1-GPU and 4-GPU batch flags | the published number it reproduces; the sources as notes."""
    rows = []
    sources: dict[tuple[str, str], list[str]] = defaultdict(list)  # (what, source) -> the suites it applies to
    for suite, r in recipes.items():
        name = SUITES.get(suite, suite)
        rows.append(
            [
                name,
                r["GLOBAL_BATCH"],
                r["MAX_STEPS"],
                r["LEARNING_RATE"],
                f"x0.1 after step {r['NUM_STEPS_BEFORE_DECAY']}, warmup {r['LR_WARMUP_STEPS']}",
                _variant(r, 1),
                _variant(r, 4),
                f"{r['PUBLISHED_MODEL']} {r['PUBLISHED_SUCCESS']}",
            ]
        )
        for key, value in r.items():
            if key.startswith("SOURCE_"):
                sources[(key.removeprefix("SOURCE_").lower(), value)].append(name)
    notes = [f"{what} ({', '.join(names)}): {source}" for (what, source), names in sources.items()]
    header = ["Suite", "Global batch", "Steps", "LR", "LR schedule", "1 GPU", "4 GPUs", "Reproduces (success %)"]
    return Table("Training recipes (craft_experiments/recipes/)", header, rows, notes)


def published_row(recipes: dict[str, dict[str, str]]) -> list[str] | None:
    """Table 1's reference row: the published success rate each suite's recipe reproduces, and their average."""
    if not all(suite in recipes for suite in SUITES):
        return None
    values = [Decimal(recipes[suite]["PUBLISHED_SUCCESS"]) for suite in SUITES]
    average = (sum(values) / len(values)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)  # 98.45 -> 98.5
    models = sorted({recipes[suite]["PUBLISHED_MODEL"] for suite in SUITES})
    return [f"{' / '.join(models)} (published)", *(str(v) for v in values), str(average)]


def _grid(
    runs: list[Run],
    table: str,
    rows: dict[str, str],
    cols: dict[str, str],
    key: Any,
    metric: str,
    percent: bool,
    expected_seeds: int,
    average: bool,
) -> tuple[list[list[str]], list[str]]:
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.table == table:
            by_key[run.key].append(run)
    body, missing = [], []
    for row_key, row_name in rows.items():
        line, row_means = [row_name], []
        for col_key in cols:
            found = by_key.get(key(row_key, col_key), [])
            values = [v for v in (metric_of(r, metric) for r in found) if v is not None]
            if len(values) < expected_seeds:
                missing.append(f"{key(row_key, col_key)}: {len(values)}/{expected_seeds} seeds")
            line.append(cell(values, percent, expected_seeds))
            if values:
                row_means.append(statistics.fmean(values))
        if average:
            line.append(
                f"{statistics.fmean(row_means) * (100 if percent else 1):.{1 if percent else 4}f}"
                if len(row_means) == len(cols)
                else MISSING
            )
        body.append(line)
    return body, missing


def build_tables(runs: list[Run], seeds: int = 3, recipes: dict[str, dict[str, str]] | None = None) -> dict[str, Table]:
    """Tables 1, 2 (success and/or held-out L1, whichever the runs have) and 4; with `recipes`, Table 1's success
    rates get a reference row: the published numbers the suites' recipes reproduce."""
    tables: dict[str, Table] = {}
    have_success = any(r.success_rate is not None for r in runs)
    have_offline = any(r.offline for r in runs)
    specs = []
    if have_success:
        specs.append(("success", True, "LIBERO success rate (%)"))
    if have_offline:
        specs.append(("heldout_l1", False, "held-out action L1 (normalised; episodes the sweep kept out of training)"))
    for metric, percent, label in specs:
        suffix = "" if metric == "success" else "_offline"
        body, missing = _grid(runs, "1", METHODS, SUITES, lambda r, c: f"{c}-{r}", metric, percent, seeds, True)
        notes = [f"missing: {m}" for m in missing] or ["all runs present"]
        reference = published_row(recipes or {}) if metric == "success" else None
        if reference is not None:
            body.append(reference)
            notes.append(
                f"{reference[0]}: the success rate each suite's training recipe reproduces "
                "(craft_experiments/recipes/, sources in recipes.md)"
            )
        tables[f"table1{suffix}"] = Table(
            f"Table 1: {label}, mean ± std over seeds (n)", ["Method", *SUITES.values(), "Avg"], body, notes
        )
        found_shots = sorted({int(r.key.split("shot")[0]) for r in runs if r.table == "2" and "shot-" in r.key})
        shots = {f"{k}shot": f"{k}-shot" for k in found_shots or (5, 10)}  # smoke sweeps use fewer shots
        body, missing = _grid(runs, "2", METHODS, shots, lambda r, c: f"{c}-{r}", metric, percent, seeds, False)
        tables[f"table2{suffix}"] = Table(
            f"Table 2: few-shot LIBERO-Spatial, {label}",
            ["Method", *shots.values()],
            body,
            [f"missing: {m}" for m in missing] or ["all runs present"],
        )
    columns = {
        "success": "Success (%)",
        "retention": "Retention loss",
        "conflict": "Conflict ratio",
        "heldout_l1": "Held-out L1",
        "cka_raw": "CKA (raw, last layer)",
    }
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.table == "4":
            by_key[run.key].append(run)
    body, missing = [], []
    for ablation, label in ABLATIONS.items():
        line = [label]
        for metric in columns:
            values = [v for v in (metric_of(r, metric) for r in by_key.get(ablation, [])) if v is not None]
            line.append(cell(values, metric == "success", seeds))
        if len(by_key.get(ablation, [])) < seeds:
            missing.append(f"{ablation}: {len(by_key.get(ablation, []))}/{seeds} seeds")
        body.append(line)
    tables["table4"] = Table(
        "Table 4: CRaFT ablations, mean ± std over seeds (n)",
        ["Variant", *columns.values()],
        body,
        [f"missing: {m}" for m in missing] or ["all runs present"],
    )
    return tables


def plot_curves(runs: list[Run], out_dir: Path, default_budget: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = {
        "baseline": [r for r in runs if r.key.endswith("baseline")],
        "craft": [r for r in runs if r.key.endswith("craft") or r.key == "full"],
    }
    panels = [
        ("CRaFT/Retention Loss", "retention_vs_budget.png", "retention loss"),
        ("CRaFT/Lambda After", "lambda.png", "lambda"),
        ("CRaFT/Conflict Ratio", "conflict_ratio.png", "conflict ratio (baseline vs CRaFT)"),
        ("VLA Train/Loss", "action_loss.png", "action L1 loss"),
    ]
    for metric, filename, title in panels:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for label, members in groups.items():
            for index, run in enumerate(members):
                points = [(r["step"], r[metric]) for r in run.rows if metric in r and r[metric] is not None]
                if points:
                    ax.plot(
                        *zip(*points, strict=True),
                        color="tab:blue" if label == "baseline" else "tab:orange",
                        alpha=0.6,
                        label=METHODS[label] if index == 0 else None,
                    )
        if metric == "CRaFT/Retention Loss":
            budgets = {r.budget for r in runs if r.budget is not None} or {default_budget}
            for budget in budgets:
                ax.axhline(budget, color="gray", linestyle="--", label=f"budget {budget:g}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=110)
        plt.close(fig)
        written.append(out_dir / filename)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.38
    for offset, (method, label) in enumerate(METHODS.items()):
        means, errors = [], []
        for suite in SUITES:
            values = [
                r.success_rate
                for r in runs
                if r.table == "1" and r.key == f"{suite}-{method}" and r.success_rate is not None
            ]
            means.append(100 * statistics.fmean(values) if values else 0.0)
            errors.append(100 * statistics.stdev(values) if len(values) > 1 else 0.0)
        xs = [i + (offset - 0.5) * width for i in range(len(SUITES))]
        ax.bar(xs, means, width, yerr=errors, label=label)
    ax.set_xticks(range(len(SUITES)), list(SUITES.values()))
    ax.set_ylabel("success rate (%)")
    ax.set_title("LIBERO success per suite")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "success_rates.png", dpi=110)
    plt.close(fig)
    written.append(out_dir / "success_rates.png")
    return written


@cli_entry
def main(cfg: MakeTablesConfig) -> None:
    runs = load_runs(cfg.run_root)
    out_dir = cfg.out_dir if cfg.out_dir is not None else cfg.run_root / "results"
    if (cfg.run_root / "study_plan.json").is_file():  # the forgetting / few-shot study (04_forgetting_fewshot)
        from forgetting_study import write_study_results

        written = write_study_results(cfg.run_root, out_dir)
        for path in written:
            if path.suffix == ".md":
                print(path.read_text())
        print(f"study: {len(written)} files in {out_dir}")
        if not runs:
            return
    if not runs:
        raise SystemExit(f"no table1-/table2-/table4- runs (or a study) under {cfg.run_root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    recipes = load_recipes(cfg.recipe)
    tables = build_tables(runs, recipes=recipes)
    if recipes:
        tables["recipes"] = recipe_table(recipes)
    for name, table in tables.items():
        (out_dir / f"{name}.md").write_text(table.markdown())
        (out_dir / f"{name}.tex").write_text(table.latex())
        print(table.markdown())
    plots = plot_curves(runs, out_dir, cfg.budget)
    print(f"{len(runs)} runs; tables and {len(plots)} plots in {out_dir}")


if __name__ == "__main__":
    main()
