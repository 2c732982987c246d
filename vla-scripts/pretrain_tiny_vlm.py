"""Pretrain the tiny Prismatic VLM on vision-language questions about synthetic LIBERO scenes, offline, on CPU.

    python vla-scripts/pretrain_tiny_vlm.py
    python vla-scripts/pretrain_tiny_vlm.py --vlm_dir /tmp/vl/vlm --seed 1 --steps 200 --overwrite True

Questions (by default: is the gripper open or closed, is the stove on, how many objects; `--families` adds left/right,
nearer the robot, leftmost object, object / gripper side, presence, drawer open) come from the synthetic world's
ground truth; held-out scenes use seeds disjoint from the training ones. The result
is a native Prismatic VLM folder (`finetune.py --vlm_path`, `load_prismatic_vlm`) plus `vl_pretraining.json`:
the flags, the held-out accuracies before and after training with chance levels, and the spec that rebuilds the
held-out set (`prismatic.training.vl_pretrain.heldout_set_from_record`).
"""

from dataclasses import dataclass, field
from pathlib import Path

from prismatic.assets.tiny_vlm import DEFAULT_TINY_BUNDLE_DIR
from prismatic.synthetic.vl_questions import DEFAULT_FAMILIES, FAMILIES
from prismatic.training.vl_pretrain import VLTrainConfig, pretrain_vl
from prismatic.util.cli import cli_entry, flag_values

DEFAULT_VL_VLM_DIR = Path("pretrained_models/prism-qwen25-tiny-dinosiglip-224px-vl")


@dataclass
class PretrainTinyVLMConfig:
    vlm_dir: Path = DEFAULT_VL_VLM_DIR  # output VLM folder (--vlm_path of finetune.py)
    bundle_dir: Path = DEFAULT_TINY_BUNDLE_DIR  # its config bundle (--config_file_path); written if missing
    seed: int = 0  # initial weights, training / held-out scenes and the training order
    families: list[str] = field(default_factory=lambda: list(DEFAULT_FAMILIES))  # question families asked
    train_scenes: int = 2000  # rendered training scenes (~5.4 questions each)
    heldout_scenes: int = 300  # held-out scenes, each question asked alone
    steps: int = 600  # optimizer steps
    batch_size: int = 16  # scenes per step (all their questions in one conversation)
    learning_rate: float = 6e-3  # AdamW peak rate
    warmup_steps: int = 20  # linear warmup, then cosine decay
    min_lr_ratio: float = 0.05  # final rate / peak rate
    weight_decay: float = 0.0
    eval_batch_size: int = 32
    num_workers: int = 2  # rendering processes
    progress: bool = True  # tqdm progress bar
    overwrite: bool = False  # replace an existing --vlm_dir

    def validate(self) -> None:
        unknown = [family for family in self.families if family not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"--families must be a non-empty list of {list(FAMILIES)} (got {self.families})")
        for name in ("train_scenes", "heldout_scenes", "eval_batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)})")


@cli_entry
def main(cfg: PretrainTinyVLMConfig) -> None:
    cfg.validate()
    train = VLTrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
    )
    settings = flag_values(cfg)
    record = pretrain_vl(
        cfg.vlm_dir,
        cfg.bundle_dir,
        cfg.seed,
        cfg.train_scenes,
        cfg.heldout_scenes,
        train,
        families=cfg.families,
        eval_batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
        settings=settings,
    )
    before, after = record["heldout_before"], record["heldout_after"]
    for family, scores in after["per_family"].items():
        print(
            f"[vl-pretrain]   {family:<13} exact {scores['exact_accuracy']:.3f} (before "
            f"{before['per_family'][family]['exact_accuracy']:.3f}, chance {scores['chance']:.3f}), "
            f"n={scores['num_examples']}",
            flush=True,
        )
    print(
        f"[vl-pretrain] {cfg.vlm_dir}: held-out exact {after['exact_accuracy']:.3f} / token "
        f"{after['token_accuracy']:.3f} (before {before['exact_accuracy']:.3f} / {before['token_accuracy']:.3f}); "
        f"family mean exact {after['family_mean']['exact_accuracy']:.3f} vs chance "
        f"{after['family_mean']['chance']:.3f}; {record['num_train_examples']} train / "
        f"{record['num_heldout_examples']} held-out questions; {record['wall_seconds']:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
