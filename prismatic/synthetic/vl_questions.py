"""Vision-language questions about synthetic LIBERO scenes, answered from the world's ground truth.

Each scene is sampled with the world's own machinery (a random task of a random suite, `sample_scene`, lighting,
table texture, wall, a random gripper pose and opening) and rendered from both cameras exactly as the episodes are
(third-person `AGENT_CAMERA` with the gripper drawn, wrist view with the fingertips), at 256 px, JPEG round-tripped
at the RLDS data's quality and resized to the model's 224 px with Lanczos, as the policy's data pipeline does.

Every question needs the images: object positions, drawer and stove states and the gripper are random per scene,
while per-name colours are fixed in the catalogue, so colour questions would be answerable from the text alone and
are not asked. Answers are a few tokens from a closed set; `majority_rates` gives each family's chance level.
Train and held-out scenes come from disjoint seeds (`SeedSequence([seed, split, scene])`).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prismatic.synthetic.controller import FINGER_OPEN
from prismatic.synthetic.episodes import encode_jpeg
from prismatic.synthetic.render import (
    AGENT_CAMERA,
    make_table_texture,
    render_background,
    render_scene,
    wrist_camera,
)
from prismatic.synthetic.world import CATALOG, SUITES, TABLE_X, TABLE_Y, TABLE_Z, Entity, Placement, sample_scene
from prismatic.util.atomic_io import atomic_write_with

GENERATOR_VERSION = 1  # bump when the scenes or questions a spec produces change
SPLITS = {"train": 0, "heldout": 1}
FAMILIES = (
    "left_right",
    "nearer_robot",
    "leftmost",
    "gripper",
    "gripper_side",
    "object_side",
    "presence",
    "count",
    "stove",
    "drawer",
)
# What `VLSetSpec` asks by default: the families whose answers show in the whole image (no relation between two
# objects). Pilots (seed 0, batch 16, 2 cores): trained alone, the gripper and stove questions reach ~100 % held-out
# within 200-300 steps, but together with the count (the default 600 steps) only the count is learned (~67 %, chance
# ~41 %) while gripper and stove stay at chance; the relational families (left/right, nearer, leftmost, object side)
# stay at chance at this model size and budget in every mix tried. They all stay available (`families=`).
DEFAULT_FAMILIES = ("gripper", "count", "stove")
NUM_VIEWS = 2  # third-person first, then wrist: the policy's image order

MIN_PIXEL_GAP = 16.0  # left/right answers need this horizontal separation (pixels of the 256 px image)
MIN_DEPTH_GAP = 0.06  # nearer-the-robot answers need this separation along the table (metres)
CLOSED_FINGER = (0.0, 0.006)  # finger gap of a closed gripper (metres); open is well apart from it
OPEN_FINGER = (0.028, FINGER_OPEN)
DRAWER_OPENING = (0.06, 0.12)
CONTAINERS = ("wooden cabinet", "cabinet", "microwave")  # entities with a drawer or door that opens


@dataclass(frozen=True)
class VLSetSpec:
    """Everything that determines a set of VL scenes; recorded so that the same set can be rebuilt."""

    seed: int
    split: str  # "train" | "heldout"
    num_scenes: int
    image_size: int = 224
    jpeg_quality: int = 95
    families: tuple[str, ...] = DEFAULT_FAMILIES  # question families asked, in `FAMILIES` order
    generator_version: int = GENERATOR_VERSION

    def __post_init__(self) -> None:
        families = tuple(self.families)
        unknown = [family for family in families if family not in FAMILIES]
        if unknown or not families:
            raise ValueError(f"families must be a non-empty subset of {list(FAMILIES)} (got {list(families)})")
        object.__setattr__(self, "families", tuple(family for family in FAMILIES if family in families))
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")
        if self.num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1 (got {self.num_scenes})")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100 (got {self.jpeg_quality})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "families": list(self.families)}  # JSON-shaped, so a read-back record compares equal

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLSetSpec:
        spec = cls(**data)
        if spec.generator_version != GENERATOR_VERSION:
            raise ValueError(
                f"the VL set was made by question generator version {spec.generator_version}, this code is version "
                f"{GENERATOR_VERSION}: the same scenes cannot be rebuilt"
            )
        return spec

    def key(self) -> str:
        """Short content hash, e.g. for a cache file name."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VLQuestion:
    family: str
    question: str
    answer: str


@dataclass(frozen=True)
class VLExample:
    """One question about one scene of a `VLSceneSet`."""

    scene: int
    question: VLQuestion


@dataclass(frozen=True)
class SceneState:
    """What a scene's questions are generated from (ground truth, before rendering)."""

    suite: str
    task_index: int
    entities: dict[str, Entity]
    placements: dict[str, Placement]
    gripper_pos: np.ndarray
    gripper_yaw: float
    finger_gap: float
    lighting: float


class VLSceneSet:
    """Rendered scenes (uint8 images, cached in memory) and the questions about each."""

    def __init__(self, spec: VLSetSpec, images: np.ndarray, questions: Sequence[tuple[VLQuestion, ...]]) -> None:
        if images.shape != (spec.num_scenes, NUM_VIEWS, spec.image_size, spec.image_size, 3):
            raise ValueError(f"images have shape {images.shape}, expected {spec.num_scenes} scenes of {NUM_VIEWS}")
        self.spec = spec
        self.images = images  # (N, 2, H, W, 3) uint8: third-person, wrist
        self.questions = list(questions)

    def __len__(self) -> int:
        return len(self.questions)

    def scenes_with_questions(self) -> list[int]:
        return [scene for scene, questions in enumerate(self.questions) if questions]

    def examples(self) -> list[VLExample]:
        return [VLExample(scene, question) for scene, qs in enumerate(self.questions) for question in qs]

    def num_examples(self) -> int:
        return sum(len(qs) for qs in self.questions)


def scene_rng(spec: VLSetSpec, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([spec.seed, SPLITS[spec.split], index]))


def display_name(entity_name: str) -> str:
    """The name a question uses: the two identical bowls of LIBERO-Spatial are both "black bowl"."""
    return entity_name.removeprefix("other ")


def sample_scene_state(spec: VLSetSpec, index: int) -> tuple[SceneState, Image.Image, tuple[int, int, int]]:
    """Ground truth of scene `index` plus its table texture and wall colour (needed only to render it)."""
    rng = scene_rng(spec, index)
    suite = list(SUITES)[int(rng.integers(len(SUITES)))]
    task_index = int(rng.integers(len(SUITES[suite])))
    task = SUITES[suite][task_index]
    entities = sample_scene(task, rng)
    placements = dict(task.entities)
    lighting = float(rng.uniform(0.85, 1.15))
    texture = make_table_texture(rng, lighting)
    red, green, blue = (int(c * lighting) for c in rng.uniform([150, 150, 150], [215, 210, 200]))
    holds = {p.ref for p in placements.values() if p.kind == "in_drawer"}
    for name, entity in entities.items():
        if name in CONTAINERS and name not in holds:  # an object inside keeps its drawer open
            entity.drawer_opening = float(rng.uniform(*DRAWER_OPENING)) if rng.random() < 0.5 else 0.0
        if name == "stove":
            entity.active = bool(rng.random() < 0.5)
    gripper_pos = rng.uniform([TABLE_X[0], TABLE_Y[0] + 0.05, TABLE_Z + 0.10], [TABLE_X[1], TABLE_Y[1] - 0.05, 1.22])
    gripper_yaw = float(rng.uniform(-0.6, 0.6))
    finger_gap = float(rng.uniform(*(CLOSED_FINGER if rng.random() < 0.5 else OPEN_FINGER)))
    state = SceneState(suite, task_index, entities, placements, gripper_pos, gripper_yaw, finger_gap, lighting)
    return state, texture, (red, green, blue)


def render_views(state: SceneState, texture: Image.Image, wall: tuple[int, int, int], spec: VLSetSpec) -> np.ndarray:
    """Both cameras as the episodes render them, JPEG round-tripped and resized: (2, H, W, 3) uint8."""
    items = list(state.entities.values())
    background = render_background(AGENT_CAMERA, texture, wall)
    agent = render_scene(
        AGENT_CAMERA, background, items, state.lighting, (state.gripper_pos, state.gripper_yaw, state.finger_gap)
    )
    cam = wrist_camera(state.gripper_pos, state.gripper_yaw)
    wrist = render_scene(
        cam, render_background(cam, texture, wall), items, state.lighting, wrist_finger_gap=state.finger_gap
    )
    views = []
    for view in (agent, wrist):
        decoded = Image.open(io.BytesIO(encode_jpeg(view, spec.jpeg_quality))).convert("RGB")
        if decoded.size != (spec.image_size, spec.image_size):
            decoded = decoded.resize((spec.image_size, spec.image_size), Image.LANCZOS)
        views.append(np.asarray(decoded, dtype=np.uint8))
    return np.stack(views)


# -- questions ---------------------------------------------------------------------------------------------------
def image_column(entity: Entity) -> float:
    """Horizontal pixel position of the entity's centre in the third-person image (256 px)."""
    centre = entity.pos + np.array([0.0, 0.0, entity.size[2] / 2])
    return float(AGENT_CAMERA.project(centre[None])[0][0, 0])


def confusable(first: str, second: str) -> bool:
    """Two catalogue entries that look alike (same shape, near colours and height), e.g. the two moka pots."""
    shape_a, color_a, size_a, accent_a = CATALOG[display_name(first)]
    shape_b, color_b, size_b, accent_b = CATALOG[display_name(second)]
    if display_name(first) == display_name(second):
        return True
    color_gap = sum(abs(a - b) for a, b in zip(color_a, color_b, strict=True))
    accent_gap = sum(abs(a - b) for a, b in zip(accent_a or color_a, accent_b or color_b, strict=True))
    height_ratio = max(size_a[2], size_b[2]) / min(size_a[2], size_b[2])
    return shape_a == shape_b and color_gap < 80 and accent_gap < 80 and height_ratio < 1.5


def pair_candidates(state: SceneState) -> list[tuple[str, str]]:
    """Pairs of objects whose relative position is random: not region-placed (e.g. the "left plate" is always on
    one side, so the answer would be in its name), named unambiguously (not one of the two black bowls) and not
    look-alikes."""
    shown = Counter(display_name(n) for n in state.entities)
    names = [n for n in state.entities if state.placements[n].kind != "region" and shown[display_name(n)] == 1]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if not confusable(a, b)]


def _ordered(rng: np.random.Generator, first: str, second: str) -> tuple[str, str]:
    return (first, second) if rng.random() < 0.5 else (second, first)


def side_answer(state: SceneState, first: str, second: str) -> str:
    """Is `first` to the "left" or the "right" of `second` in the third-person image?"""
    return "left" if image_column(state.entities[first]) < image_column(state.entities[second]) else "right"


def nearer_answer(state: SceneState, first: str, second: str) -> str:
    """Is `first` nearer to the robot (smaller x) than `second`: "yes" / "no"."""
    return "yes" if state.entities[first].pos[0] < state.entities[second].pos[0] else "no"


def separated_pair(
    state: SceneState, rng: np.random.Generator, coordinate: Callable[[Entity], float], minimum: float
) -> tuple[str, str] | None:
    """A random candidate pair at least `minimum` apart in `coordinate`, in random order (None if there is none)."""
    pairs = [
        pair
        for pair in pair_candidates(state)
        if abs(coordinate(state.entities[pair[0]]) - coordinate(state.entities[pair[1]])) >= minimum
    ]
    if not pairs:
        return None
    return _ordered(rng, *pairs[int(rng.integers(len(pairs)))])


def left_right_question(state: SceneState, rng: np.random.Generator) -> VLQuestion | None:
    pair = separated_pair(state, rng, image_column, MIN_PIXEL_GAP)
    if pair is None:
        return None
    first, second = pair
    side = side_answer(state, first, second)
    question = f"In the image, is the {display_name(first)} to the left or to the right of the {display_name(second)}?"
    return VLQuestion("left_right", question, side)


def nearer_robot_question(state: SceneState, rng: np.random.Generator) -> VLQuestion | None:
    """The robot stands at the far (-x) end of the table, at the top of the third-person image. A yes/no answer
    keeps the chance level at one half (naming the nearer object would be a coin flip between the two names)."""
    pair = separated_pair(state, rng, lambda entity: float(entity.pos[0]), MIN_DEPTH_GAP)
    if pair is None:
        return None
    first, second = pair
    answer = nearer_answer(state, first, second)
    question = f"Is the {display_name(first)} nearer to the robot than the {display_name(second)}?"
    return VLQuestion("nearer_robot", question, answer)


def leftmost_question(state: SceneState) -> VLQuestion | None:
    columns = sorted((image_column(entity), display_name(name)) for name, entity in state.entities.items())
    leftmost_column, leftmost = columns[0]
    others = [column for column, name in columns[1:] if name != leftmost]
    if others and others[0] - leftmost_column < MIN_PIXEL_GAP:
        return None
    return VLQuestion("leftmost", "Which object is furthest to the left in the image?", leftmost)


def side_of_image(column: float) -> str | None:
    """ "left" / "right" half of the third-person image, None too close to the middle to tell."""
    if abs(column - AGENT_CAMERA.size / 2) < MIN_PIXEL_GAP:
        return None
    return "left" if column < AGENT_CAMERA.size / 2 else "right"


def object_side_question(state: SceneState, rng: np.random.Generator) -> VLQuestion | None:
    shown = Counter(display_name(n) for n in state.entities)
    sides = {
        name: side_of_image(image_column(entity))
        for name, entity in state.entities.items()
        if shown[display_name(name)] == 1 and state.placements[name].kind != "region"
    }
    names = [name for name, side in sides.items() if side is not None]
    if not names:
        return None
    name = names[int(rng.integers(len(names)))]
    question = f"Is the {display_name(name)} on the left or the right side of the image?"
    return VLQuestion("object_side", question, sides[name])


def gripper_side_question(state: SceneState) -> VLQuestion | None:
    side = side_of_image(float(AGENT_CAMERA.project(state.gripper_pos[None])[0][0, 0]))
    if side is None:
        return None
    return VLQuestion("gripper_side", "Is the gripper on the left or the right side of the image?", side)


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def presence_question(state: SceneState, rng: np.random.Generator) -> VLQuestion | None:
    """Half the time an object of the scene, else a catalogue object that is absent and looks like none present."""
    present = sorted({display_name(n) for n in state.entities})
    absent = [name for name in CATALOG if not any(confusable(name, other) for other in present)]
    if rng.random() < 0.5 or not absent:
        return VLQuestion(
            "presence", f"Is there {with_article(present[int(rng.integers(len(present)))])} on the table?", "yes"
        )
    return VLQuestion(
        "presence", f"Is there {with_article(absent[int(rng.integers(len(absent)))])} on the table?", "no"
    )


def gripper_question(state: SceneState) -> VLQuestion:
    answer = "closed" if state.finger_gap <= CLOSED_FINGER[1] else "open"
    return VLQuestion("gripper", "Is the gripper open or closed?", answer)


def count_question(state: SceneState) -> VLQuestion:
    return VLQuestion("count", "How many objects are on the table?", str(len(state.entities)))


def stove_question(state: SceneState) -> VLQuestion | None:
    """Only when nothing stands on the stove (which would hide its burner)."""
    stove = state.entities.get("stove")
    covered = any(p.kind == "on" and p.ref == "stove" for p in state.placements.values())
    if stove is None or covered:
        return None
    return VLQuestion("stove", "Is the stove turned on?", "yes" if stove.active else "no")


def drawer_question(state: SceneState, rng: np.random.Generator) -> VLQuestion | None:
    present = [name for name in CONTAINERS if name in state.entities]
    if not present:
        return None
    name = present[int(rng.integers(len(present)))]
    answer = "yes" if state.entities[name].drawer_opening > 0.0 else "no"
    return VLQuestion("drawer", f"Is the drawer of the {name} open?", answer)


def scene_questions(
    state: SceneState, rng: np.random.Generator, families: Sequence[str] = FAMILIES
) -> tuple[VLQuestion, ...]:
    """One question of every family in `families` that applies to the scene, in `FAMILIES` order. Every family's
    question is drawn (and its random draws made) whether asked or not, so a scene's questions do not depend on
    which other families are asked."""
    candidates = (
        left_right_question(state, rng),
        nearer_robot_question(state, rng),
        leftmost_question(state),
        gripper_question(state),
        gripper_side_question(state),
        object_side_question(state, rng),
        presence_question(state, rng),
        count_question(state),
        stove_question(state),
        drawer_question(state, rng),
    )
    return tuple(question for question in candidates if question is not None and question.family in families)


def make_scene(spec: VLSetSpec, index: int) -> tuple[np.ndarray, tuple[VLQuestion, ...]]:
    """Images and questions of scene `index`; a pure function of (spec, index)."""
    state, texture, wall = sample_scene_state(spec, index)
    question_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, SPLITS[spec.split], index, 1]))
    return render_views(state, texture, wall, spec), scene_questions(state, question_rng, spec.families)


class _SceneMaker:
    """Picklable `index -> make_scene(spec, index)` for worker processes."""

    def __init__(self, spec: VLSetSpec) -> None:
        self.spec = spec

    def __call__(self, index: int) -> tuple[np.ndarray, tuple[VLQuestion, ...]]:
        return make_scene(self.spec, index)


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # rendering is numpy/PIL: one thread per process


def build_scene_set(spec: VLSetSpec, num_workers: int = 1) -> VLSceneSet:
    """Render every scene of `spec` (in `num_workers` processes; the result does not depend on it)."""
    maker = _SceneMaker(spec)
    indices = range(spec.num_scenes)
    if num_workers <= 1 or spec.num_scenes < 8:
        results = [maker(index) for index in indices]
    else:
        # "spawn": the parent may already run torch's thread pool, which `fork` must not copy.
        with mp.get_context("spawn").Pool(num_workers, initializer=_worker_init) as pool:
            results = pool.map(maker, indices, chunksize=max(1, spec.num_scenes // (8 * num_workers)))
    images = np.stack([views for views, _ in results])
    return VLSceneSet(spec, images, [questions for _, questions in results])


def load_or_build_scene_set(spec: VLSetSpec, cache_dir: str | Path | None = None, num_workers: int = 1) -> VLSceneSet:
    """`build_scene_set`, kept as `<cache_dir>/vl-<spec key>.npz` when a cache folder is given."""
    if cache_dir is None:
        return build_scene_set(spec, num_workers)
    path = Path(cache_dir) / f"vl-{spec.key()}.npz"
    if path.is_file():
        with np.load(path) as data:
            recorded = json.loads(str(data["meta"]))
            if recorded["spec"] == spec.to_dict():
                questions = [tuple(VLQuestion(**q) for q in qs) for qs in recorded["questions"]]
                return VLSceneSet(spec, data["images"], questions)
    scene_set = build_scene_set(spec, num_workers)
    meta = {"spec": spec.to_dict(), "questions": [[asdict(q) for q in qs] for qs in scene_set.questions]}
    atomic_write_with(path, lambda handle: np.savez(handle, images=scene_set.images, meta=np.array(json.dumps(meta))))
    return scene_set


def majority_rates(examples: Sequence[VLExample]) -> dict[str, float]:
    """Chance level per family: how often its most frequent answer is right."""
    by_family: dict[str, Counter[str]] = {}
    for example in examples:
        by_family.setdefault(example.question.family, Counter())[example.question.answer] += 1
    return {
        family: counts.most_common(1)[0][1] / sum(counts.values())
        for family, counts in sorted(by_family.items(), key=lambda item: FAMILIES.index(item[0]))
    }
