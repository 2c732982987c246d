"""Registry of the RLDS datasets the pipeline knows, and of their robot constants.

Everything dataset-specific lives here: which observation keys hold the cameras, how to build the proprio vector,
the standardisation transform, and the robot constants (action chunk, action / proprio dims, normalisation) that
the model and the training loop read from the chosen dataset - never from the command line's text.

Adding a dataset: write its standardisation function in `rlds/standardize.py` (map the raw trajectory to
`action` (T, A) and `observation/proprio` (T, P)), then register a `DatasetConfig` below (or at run time with
`register_dataset`) naming the image keys, the standardisation, the action normalisation mask and its
`RobotConstants`. Mixtures are lists of (dataset name, sampling weight).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prismatic.vla.constants import LIBERO_CONSTANTS, RobotConstants


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    image_keys: dict[str, str]  # camera role ("primary", "wrist") -> key under steps/observation
    standardize: str  # name of a function in rlds/standardize.py
    robot: RobotConstants
    # Action dims normalised with the statistics (False = passed through, e.g. LIBERO's 0/1 gripper).
    action_normalization_mask: tuple[bool, ...] = field(default=())
    language_key: str = "language_instruction"

    def camera_keys(self, num_images: int) -> list[str]:
        """Observation keys of the first `num_images` cameras (primary first, then wrist)."""
        keys = [self.image_keys[role] for role in ("primary", "wrist") if role in self.image_keys]
        if num_images > len(keys):
            raise ValueError(f"{self.name} has {len(keys)} camera(s); --num_images_in_input {num_images} is too many")
        return keys[:num_images]


def _libero(name: str) -> DatasetConfig:
    return DatasetConfig(
        name=name,
        image_keys={"primary": "image", "wrist": "wrist_image"},
        standardize="libero",
        robot=LIBERO_CONSTANTS,
        action_normalization_mask=(True,) * 6 + (False,),
    )


LIBERO_SUITES = ("libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops")
DATASETS: dict[str, DatasetConfig] = {name: _libero(name) for name in LIBERO_SUITES}
MIXTURES: dict[str, list[tuple[str, float]]] = {
    "libero_4_task_suites_no_noops": [(name, 1.0) for name in LIBERO_SUITES],
}


def register_dataset(config: DatasetConfig, overwrite: bool = False) -> None:
    if config.name in DATASETS and not overwrite:
        raise ValueError(f"dataset {config.name!r} is already registered")
    DATASETS[config.name] = config


def resolve_mixture(name: str) -> list[tuple[DatasetConfig, float]]:
    """`--dataset_name` -> [(dataset config, weight)]; a single dataset is a mixture of one."""
    if name in MIXTURES:
        return [(DATASETS[member], weight) for member, weight in MIXTURES[name]]
    if name in DATASETS:
        return [(DATASETS[name], 1.0)]
    known = sorted([*DATASETS, *MIXTURES])
    raise ValueError(f"unknown --dataset_name {name!r}; registered datasets and mixtures: {known}")


def robot_constants(name: str) -> RobotConstants:
    """Robot constants of a dataset or mixture (all members must agree)."""
    members = {cfg.robot for cfg, _ in resolve_mixture(name)}
    if len(members) != 1:
        raise ValueError(f"mixture {name!r} mixes robots with different constants: {members}")
    return members.pop()
