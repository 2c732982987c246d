"""The forgetting / few-shot study's SMOKE mode end to end: pretraining, plan, runs, evaluations, tables, rerun."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_python

SCRIPT = REPO_ROOT / "craft_experiments" / "04_forgetting_fewshot" / "run_study.py"


def study(tmp_path: Path, *extra: str) -> tuple[int, str]:
    args = [
        str(SCRIPT),
        "--smoke",
        "True",
        "--run_root",
        str(tmp_path / "runs"),
        "--vlm_path",
        str(tmp_path / "vl"),
        "--config_file_path",
        str(tmp_path / "configs-tiny"),
        "--data_root_dir",
        str(tmp_path / "data"),
        *extra,
    ]
    proc = run_python(args, timeout=1200, env={"VLA_CRAFT_CACHE_DIR": str(tmp_path / "cache")})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_smoke_study_runs_end_to_end_and_reruns_without_training(tmp_path: Path) -> None:
    code, output = study(tmp_path)
    assert code == 0, output[-3000:]
    root = tmp_path / "runs-smoke"  # the smoke mode keeps its outputs apart from the real study's
    plan = json.loads((root / "study_plan.json").read_text())
    drift = plan["pilot"]["retention_drift"]
    assert drift > 0 and math.isclose(plan["retention_budget"], 0.2 * drift)
    assert math.isclose(plan["dual_lr"], 0.25 / drift)
    assert math.isclose(plan["fixed_lambda"], plan["pilot"]["action_loss"] / drift)

    record = json.loads((tmp_path / "vl-smoke" / "vl_pretraining.json").read_text())
    pretrained = json.loads((root / "pretrained_vl.json").read_text())
    assert pretrained == record["heldout_after"]  # the study rebuilds exactly the pretraining's held-out set

    expected = {
        "study-baseline-full-seed1",
        "study-craft-full-seed1",
        "study-baseline-5shot-seed1",
        "study-craft-5shot-seed1",
        "study-no_dual-full-seed1",
        "study-craft_cache_f0.25-full-seed1",
    }
    evaluated = {path.parent.name for path in root.glob("study-*/study_eval.json")}
    assert evaluated == expected
    for name in expected:
        result = json.loads((root / name / "study_eval.json").read_text())
        assert 0.0 <= result["vl"]["exact_accuracy"] <= 1.0
        assert result["vl"]["num_examples"] == pretrained["num_examples"]
        for split in ("trained_tasks", "unseen_tasks"):
            assert math.isfinite(result[split]["action_l1"]) and result[split]["num_samples"] > 0
            cka = result[split]["cka"]["raw"]
            assert cka and all(-1e-6 <= value <= 1 + 1e-6 for value in cka.values())
        rows = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert any("CRaFT/Retention Loss" in row for row in rows), name  # (d): measured by baselines too
    episodes = json.loads((root / "study-baseline-5shot-seed1" / "episodes.json").read_text())
    assert len(episodes) == 8 * 5  # 5 of each of the tasks 0-7: tasks 8-9 stay unseen

    results = root / "results"
    main_table = (results / "study_main.md").read_text()
    for row in ("Baseline, all episodes", "CRaFT, all episodes", "Baseline, 5-shot", "CRaFT, 5-shot"):
        assert row in main_table
    assert "± 0.0000 (1)" in main_table  # one seed in the smoke study, and the tables say so
    summary = json.loads((results / "study_summary.json").read_text())
    assert set(summary["craft_minus_baseline"]) == {"full", "5shot"}
    assert (results / "study_forgetting.png").stat().st_size > 10_000

    code, output = study(tmp_path)  # everything is done: nothing is trained or evaluated again
    assert code == 0, output[-3000:]
    assert "[study] trained" not in output and "VL exact" not in output

    code, output = study(tmp_path, "--learning_rate", "0.002")
    assert code != 0 and "learning_rate" in output.strip().splitlines()[-1]


def test_methods_may_join_a_planned_study_and_are_recorded_but_settings_may_not_change(tmp_path: Path) -> None:
    """Which methods run is not part of the plan (budget, steps and seeds do not depend on it): an added method is
    accepted and written into the plan with its date, once; a changed setting is still refused."""
    study_module = runpy.run_path(str(SCRIPT))
    config_type, make_plan, flag_values = (
        study_module["StudyConfig"],
        study_module["make_plan"],
        study_module["flag_values"],
    )
    planned = config_type(run_root=tmp_path, cheap_modes=["craft_cache"], ablations=["no_dual"])
    plan = {"settings": flag_values(planned), "retention_budget": 1.0}
    (tmp_path / "study_plan.json").write_text(json.dumps(plan))
    assert "methods_added" not in make_plan(planned)

    later = config_type(run_root=tmp_path, cheap_modes=["craft_cache", "craft_cache_slack0.5"], ablations=["no_dual"])
    for _ in range(2):  # the second time there is nothing new to record
        assert make_plan(later)["retention_budget"] == 1.0
    stored = json.loads((tmp_path / "study_plan.json").read_text())
    assert [entry["cheap_modes"] for entry in stored["methods_added"]] == [["craft_cache_slack0.5"]]
    assert stored["settings"] == plan["settings"]  # what was planned first stays as it was

    with pytest.raises(SystemExit, match="steps"):
        make_plan(config_type(run_root=tmp_path, steps=7))
