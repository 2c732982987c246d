"""Generate synthetic LIBERO RLDS datasets offline (the stand-in for `openvla/modified_libero_rlds`).

    python vla-scripts/make_synthetic_libero.py --data_root_dir data/libero --episodes_per_task 5 --seed 0
    python vla-scripts/make_synthetic_libero.py --data_root_dir data/unseen --suites "[libero_spatial_no_noops]" \
        --task_ids "[8,9]"

Writes `libero_spatial_no_noops`, `libero_object_no_noops`, `libero_goal_no_noops` and `libero_10_no_noops` (or the
`--suites` given) under `--data_root_dir`, in the exact LIBERO RLDS feature layout. Re-running with the same flags
keeps the existing datasets; different flags need `--overwrite True`.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

from prismatic.synthetic.rlds_writer import SyntheticSuiteSpec, read_summary, write_synthetic_suite
from prismatic.synthetic.world import SUITES
from prismatic.util.cli import cli_entry


@dataclass
class MakeSyntheticLiberoConfig:
    data_root_dir: Path = Path("data/libero")  # datasets land in <data_root_dir>/<dataset_name>/1.0.0/
    episodes_per_task: int = 5  # demonstrations per task (10 tasks per suite)
    seed: int = 0  # same seed + flags -> identical datasets
    suites: list[str] = field(default_factory=lambda: list(SUITES))  # which of the four suites to write
    num_workers: int = 2  # rendering processes (1 = render in this process)
    jpeg_quality: int = 95
    task_ids: list[int] | None = None  # only these tasks of each suite (0..9; None: all), e.g. for unseen-task tests
    overwrite: bool = False  # replace existing datasets written with other flags

    def validate(self) -> None:
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown:
            raise ValueError(f"--suites: unknown {unknown}; choose from {list(SUITES)}")
        if self.episodes_per_task < 1:
            raise ValueError(f"--episodes_per_task must be >= 1 (got {self.episodes_per_task})")
        if self.num_workers < 1:
            raise ValueError(f"--num_workers must be >= 1 (got {self.num_workers})")
        if self.task_ids is not None and (not self.task_ids or not all(0 <= task <= 9 for task in self.task_ids)):
            raise ValueError(f"--task_ids must be a non-empty list of task indices 0..9 (got {self.task_ids})")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg_quality must be in 1..100 (got {self.jpeg_quality})")


@cli_entry
def main(cfg: MakeSyntheticLiberoConfig) -> None:
    cfg.validate()
    for name in cfg.suites:
        tasks = sorted(set(cfg.task_ids)) if cfg.task_ids is not None else None
        spec = SyntheticSuiteSpec(name, cfg.episodes_per_task, cfg.seed, cfg.jpeg_quality, task_ids=tasks)
        start = time.perf_counter()
        folder, built = write_synthetic_suite(cfg.data_root_dir, spec, cfg.num_workers, cfg.overwrite)
        summary = read_summary(folder)
        action = f"wrote in {time.perf_counter() - start:.1f}s" if built else "up to date, kept"
        print(
            f"[synthetic-libero] {name}: {len(spec.requests())} episodes, {summary['num_transitions']} transitions "
            f"(episode length {summary['episode_length_min_max']}) -> {folder} ({action})",
            flush=True,
        )


if __name__ == "__main__":
    main()
