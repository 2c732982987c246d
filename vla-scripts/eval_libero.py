"""Evaluate a checkpoint on a LIBERO suite with the published protocol (parallel, resumable).

    python vla-scripts/eval_libero.py --pretrained_checkpoint runs/<run>--20000_chkpt --task_suite_name libero_spatial
    python vla-scripts/eval_libero.py --pretrained_checkpoint VLA-Adapter/LIBERO-Spatial-Pro --num_workers 8
    python vla-scripts/eval_libero.py ... --num_trials_per_task 2 --task_ids '[0,3]'      # quick check

Works with this project's checkpoints and released VLA-Adapter folders. Results go to `--results_dir` (default
`<checkpoint>/eval_<suite>`): `eval_results.json` (per-task and total success, the full protocol, versions),
`episodes.jsonl` (one line per episode; re-running resumes), `eval.log`, optional `videos/`.
Needs the simulator (`bash setup.sh libero`) and LIBERO's assets (`--libero_assets_dir`).

Exit status: 0 when every episode was played to the end; 1 when some errored (they are played again by the next run);
2 for a wrong flag or file; 130 / 143 when stopped by SIGINT / SIGTERM (workers stopped, finished episodes kept, the
same command resumes).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from prismatic.util.cli import cli_entry
from prismatic.util.wandb_settings import resolve_wandb_settings


@dataclass
class EvalLiberoConfig:
    pretrained_checkpoint: Path = Path("")  # checkpoint folder (ours or a released VLA-Adapter one); required
    task_suite_name: str = "libero_spatial"  # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    num_trials_per_task: int = 50
    # "DEFAULT" = the suite's initial states; or VLA-Adapter's JSON of initial states (trials whose expert demo failed
    # are skipped)
    initial_states_path: str | None = "DEFAULT"
    task_ids: list[int] | None = None  # subset of tasks (None = all)
    num_workers: int = 2  # parallel environment processes (0 = in this process, for debugging)
    results_dir: Path | None = None
    center_crop: bool = True  # for models trained with --image_aug True (the recipes)
    num_images_in_input: int | None = None  # default: from the checkpoint (2 for released LIBERO models)
    base_vlm_path: Path | None = None  # a LoRA checkpoint's base VLM; default: the one it records
    # VLA-Adapter's evaluation flags, accepted so that its command runs unchanged; the checkpoint decides, a
    # value that contradicts it is an error
    use_proprio: bool | None = None  # the checkpoint has a proprio projector
    use_pro_version: bool | None = None  # the checkpoint's head is the Pro head
    use_film: bool = False  # FiLM is not implemented
    unnorm_key: str | None = None  # dataset statistics entry (default: <suite>, then <suite>_no_noops)
    num_open_loop_steps: int = 8  # actions of each predicted chunk executed before the next query (1-8)
    max_steps: int | None = None  # default: the suite's published value
    seed: int = 7
    libero_assets_dir: Path | None = None  # LIBERO's `assets` folder (meshes and textures)
    render_backend: str = "egl"  # MUJOCO_GL where environments run: egl (GPU or EGL CPU), osmesa (pure CPU) or glfw
    # an episode running longer (a hung simulator step) is stopped and recorded as an error; None or 0 = no limit
    episode_timeout_s: float | None = None
    save_videos: bool = False
    max_batch: int = 64  # largest batched policy query
    device: str = "auto"  # auto | cpu | cuda
    env_factory: str = "prismatic.eval.libero_env:LiberoEnvFactory"  # advanced: another simulator / a stand-in
    use_wandb: bool = False
    wandb_project: str | None = None  # None: $WANDB_PROJECT, else vla-eval
    wandb_entity: str | None = None  # None: $WANDB_ENTITY
    wandb_mode: str | None = None  # online | offline | disabled; None: $WANDB_MODE, else online


@cli_entry
def main(cfg: EvalLiberoConfig) -> None:
    from prismatic.eval.libero_env import (
        RENDER_BACKENDS,
        apply_render_backend,
        initial_states_file,
        read_initial_states,
        resolve_factory,
    )

    if cfg.render_backend not in RENDER_BACKENDS:
        raise ValueError(f"--render_backend must be one of {', '.join(RENDER_BACKENDS)} (got {cfg.render_backend!r})")
    if cfg.num_workers == 0:
        # environments render in this process: MUJOCO_GL is read once, when the simulator is imported, so it is set
        # before anything else is imported
        apply_render_backend(cfg.render_backend)

    import torch

    from prismatic.eval.policy_adapter import ChunkPolicy
    from prismatic.eval.protocol import Protocol, statistics_key, suite_of
    from prismatic.eval.runner import EvalInterrupted, EvalSettings, evaluate, format_rate
    from prismatic.models.inference import ActionPredictor
    from prismatic.models.loaders import inspect_policy_folder, load_inspected_policy, read_dataset_statistics
    from prismatic.models.tokenizer import load_tokenizer
    from prismatic.training.distributed import seed_everything

    suite = suite_of(cfg.task_suite_name)
    if not str(cfg.pretrained_checkpoint) or not cfg.pretrained_checkpoint.is_dir():
        raise FileNotFoundError(f"--pretrained_checkpoint {cfg.pretrained_checkpoint!s} is not a checkpoint folder")
    if cfg.num_trials_per_task < 1:
        raise ValueError(f"--num_trials_per_task must be >= 1 (got {cfg.num_trials_per_task})")
    if not 1 <= cfg.num_open_loop_steps <= 8:
        raise ValueError(f"--num_open_loop_steps must be in 1..8, the action chunk (got {cfg.num_open_loop_steps})")
    if cfg.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0 (got {cfg.num_workers})")
    if cfg.episode_timeout_s is not None and cfg.episode_timeout_s < 0:
        raise ValueError(
            f"--episode_timeout_s must be >= 0 seconds (0 or None = no limit; got {cfg.episode_timeout_s})"
        )
    initial_states_path = initial_states_file(cfg.initial_states_path)
    if initial_states_path is not None:
        read_initial_states(initial_states_path)  # a bad file stops the run now, not after the model has loaded
    if cfg.use_film:
        raise ValueError("--use_film True (FiLM conditioning) is not implemented: use --use_film False")
    wandb_settings = resolve_wandb_settings(cfg.wandb_mode, cfg.wandb_project, cfg.wandb_entity, "vla-eval")
    resolve_factory(cfg.env_factory)  # a wrong --env_factory stops the run now, not after the model has loaded
    factory_kwargs = {}
    if cfg.env_factory.endswith(":LiberoEnvFactory"):
        from prismatic.eval.libero_env import configure_libero

        configure_libero(cfg.libero_assets_dir)  # fails here, with the fix, if the simulator or assets are missing
        factory_kwargs = {"assets_dir": str(cfg.libero_assets_dir) if cfg.libero_assets_dir else None}

    seed_everything(cfg.seed)
    device = (
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    found = inspect_policy_folder(cfg.pretrained_checkpoint, cfg.num_images_in_input, cfg.base_vlm_path)
    for flag, wanted, held in (
        ("--use_proprio", cfg.use_proprio, found.spec.use_proprio),
        ("--use_pro_version", cfg.use_pro_version, found.spec.use_pro_version),
    ):
        if wanted is not None and wanted != held:
            raise ValueError(
                f"{flag} {wanted}: {cfg.pretrained_checkpoint} was trained with {flag.removeprefix('--')}={held} "
                f"(omit the flag to follow the checkpoint)"
            )
    stats = read_dataset_statistics(found.folder)
    unnorm_key = statistics_key(suite, list(stats), cfg.unnorm_key)  # checked before the model is loaded
    loaded = load_inspected_policy(found)
    predictor = ActionPredictor(
        loaded.policy,
        load_tokenizer(cfg.pretrained_checkpoint),
        stats,
        unnorm_key=unnorm_key,
        device=device,
        autocast_dtype=torch.bfloat16 if device == "cuda" else None,
    )
    protocol = Protocol(
        suite=suite,
        num_trials_per_task=cfg.num_trials_per_task,
        task_ids=tuple(cfg.task_ids) if cfg.task_ids is not None else None,
        seed=cfg.seed,
        max_steps=cfg.max_steps,
        center_crop=cfg.center_crop,
        num_open_loop_steps=cfg.num_open_loop_steps,
    )
    results_dir = cfg.results_dir or cfg.pretrained_checkpoint / f"eval_{suite}"
    settings = EvalSettings(
        protocol=protocol,
        results_dir=Path(results_dir),
        num_workers=cfg.num_workers,
        env_factory=cfg.env_factory,
        env_factory_kwargs=factory_kwargs,
        save_videos=cfg.save_videos,
        max_batch=cfg.max_batch,
        checkpoint=str(cfg.pretrained_checkpoint.resolve()),
        render_backend=cfg.render_backend,
        episode_timeout_s=cfg.episode_timeout_s or None,
        initial_states_path=initial_states_path,
        setup={
            "statistics_key": unnorm_key,
            "num_images_in_input": loaded.spec.num_images_in_input,
            "use_proprio": loaded.spec.use_proprio,
            "use_pro_version": loaded.spec.use_pro_version,
        },
    )
    policy = ChunkPolicy(predictor, loaded.spec.num_images_in_input, cfg.center_crop)
    try:
        results = evaluate(settings, policy)
    except EvalInterrupted as interrupted:
        print(f"error: {interrupted.message()}", file=sys.stderr, flush=True)
        raise SystemExit(interrupted.exit_code) from None
    total = results["total"]
    print(
        f"[eval] {suite}: {total['successes']}/{total['trials']} = {format_rate(total['success_rate'])} "
        f"({total['errors']} errored) -> {settings.results_dir / 'eval_results.json'}",
        flush=True,
    )
    if cfg.use_wandb and wandb_settings.mode != "disabled":
        import wandb

        run = wandb.init(
            project=wandb_settings.project,
            entity=wandb_settings.entity,
            mode=wandb_settings.mode,
            dir=str(wandb_settings.dir) if wandb_settings.dir is not None else None,
            name=f"eval-{suite}-{cfg.pretrained_checkpoint.name}",
            config=results["protocol"],
        )
        run.log(
            {
                f"Eval/{suite} Success Rate": total["success_rate"],
                **{f"Eval/{suite} Task {k}": v["success_rate"] for k, v in results["per_task"].items()},
            }
        )
        run.finish()
    if total["errors"]:
        first = results["first_error"]
        print(
            f"error: {total['errors']} episode(s) errored and are not counted as failures; re-run the same command to "
            f"play them again. First: task {first['task_id']} trial {first['trial']}: {first['error']}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
