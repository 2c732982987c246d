"""Objects, placements and the 40 tasks (4 suites x 10) of the synthetic LIBERO world.

Each suite mirrors its real counterpart: LIBERO-Spatial asks for one of two identical black bowls by where it is;
LIBERO-Object asks for one grocery item among several; LIBERO-Goal keeps one scene and varies the goal;
LIBERO-10 chains two skills. Object positions are sampled per episode, so the actions can only be predicted by
looking at the images (and, where scenes are shared, by reading the instruction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TABLE_Z = 0.90  # height of the table top (metres, robot-base frame as in LIBERO states)
TABLE_X = (-0.22, 0.22)  # reachable part of the table
TABLE_Y = (-0.30, 0.30)

Color = tuple[int, int, int]


@dataclass
class Entity:
    """A box or cylinder resting at `pos` (x, y, bottom z); `size` = (half-x or radius, half-y or radius, height)."""

    name: str
    shape: str  # "box" | "cylinder"
    color: Color
    size: tuple[float, float, float]
    pos: np.ndarray
    yaw: float = 0.0
    accent: Color | None = None
    drawer_opening: float = 0.0  # metres a cabinet drawer is pulled out (+x)
    active: bool = False  # e.g. a stove that has been turned on

    @property
    def top_z(self) -> float:
        return float(self.pos[2] + self.size[2])

    @property
    def radius(self) -> float:
        return float(max(self.size[0], self.size[1]))


# name -> (shape, color, size, accent)
CATALOG: dict[str, tuple[str, Color, tuple[float, float, float], Color | None]] = {
    "black bowl": ("cylinder", (38, 38, 42), (0.040, 0.040, 0.035), (18, 18, 20)),
    "bowl": ("cylinder", (225, 225, 215), (0.040, 0.040, 0.035), (190, 190, 180)),
    "plate": ("cylinder", (240, 240, 240), (0.055, 0.055, 0.012), (215, 215, 222)),
    "left plate": ("cylinder", (240, 240, 240), (0.050, 0.050, 0.012), (215, 215, 222)),
    "right plate": ("cylinder", (240, 240, 240), (0.050, 0.050, 0.012), (215, 215, 222)),
    "ramekin": ("cylinder", (235, 220, 190), (0.028, 0.028, 0.030), (200, 180, 150)),
    "cookie box": ("box", (200, 60, 50), (0.045, 0.030, 0.030), None),
    "wooden cabinet": ("box", (135, 95, 60), (0.060, 0.080, 0.150), None),
    "cabinet": ("box", (135, 95, 60), (0.060, 0.080, 0.150), None),
    "stove": ("box", (60, 60, 65), (0.060, 0.060, 0.020), (110, 110, 115)),
    "basket": ("box", (170, 130, 70), (0.070, 0.070, 0.050), (110, 80, 45)),
    "wine bottle": ("cylinder", (40, 90, 50), (0.022, 0.022, 0.110), (25, 55, 30)),
    "rack": ("box", (150, 150, 160), (0.040, 0.070, 0.040), (90, 90, 100)),
    "cream cheese": ("box", (235, 235, 245), (0.030, 0.020, 0.025), (60, 100, 200)),
    "cream cheese box": ("box", (235, 235, 245), (0.030, 0.020, 0.025), (60, 100, 200)),
    "alphabet soup": ("cylinder", (200, 40, 40), (0.025, 0.025, 0.060), (230, 230, 230)),
    "salad dressing": ("cylinder", (80, 160, 70), (0.020, 0.020, 0.090), (240, 240, 240)),
    "bbq sauce": ("cylinder", (110, 50, 30), (0.020, 0.020, 0.085), (40, 20, 10)),
    "ketchup": ("cylinder", (210, 30, 30), (0.020, 0.020, 0.085), (250, 250, 250)),
    "tomato sauce": ("cylinder", (230, 90, 40), (0.025, 0.025, 0.055), (60, 130, 50)),
    "butter": ("box", (245, 220, 90), (0.028, 0.018, 0.020), (250, 250, 240)),
    "milk": ("box", (245, 245, 250), (0.022, 0.022, 0.080), (60, 140, 230)),
    "chocolate pudding": ("box", (100, 60, 35), (0.026, 0.018, 0.022), (220, 200, 170)),
    "orange juice": ("box", (250, 150, 30), (0.022, 0.022, 0.080), (80, 170, 60)),
    "moka pot": ("cylinder", (170, 170, 180), (0.030, 0.030, 0.070), (60, 60, 60)),
    "second moka pot": ("cylinder", (150, 150, 160), (0.030, 0.030, 0.070), (50, 50, 50)),
    "white mug": ("cylinder", (245, 245, 245), (0.030, 0.030, 0.045), (210, 210, 210)),
    "yellow and white mug": ("cylinder", (240, 210, 60), (0.030, 0.030, 0.045), (250, 250, 250)),
    "book": ("box", (60, 80, 160), (0.040, 0.028, 0.015), (230, 230, 230)),
    "caddy": ("box", (200, 200, 120), (0.050, 0.080, 0.040), (150, 150, 90)),
    "microwave": ("box", (210, 210, 215), (0.070, 0.090, 0.090), (30, 30, 35)),
}
GROCERIES = (
    "alphabet soup",
    "cream cheese",
    "salad dressing",
    "bbq sauce",
    "ketchup",
    "tomato sauce",
    "butter",
    "milk",
    "chocolate pudding",
    "orange juice",
)


@dataclass(frozen=True)
class Placement:
    """Where an entity goes in a new episode.

    kind: "free" (anywhere on the table, away from others), "center" (near the table centre),
    "near" (within reach of `ref`), "between" (midpoint of `ref` and `ref2`), "on" (on top of `ref`),
    "in_drawer" (inside the opened drawer of `ref`), "region" (centre uniformly in `region` = x0, x1, y0, y1).
    """

    kind: str = "free"
    ref: str | None = None
    ref2: str | None = None
    region: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Skill:
    """One scripted skill of the demonstrator (see `controller.py`)."""

    kind: str  # "pick_place" | "push" | "press" | "pull"
    obj: str
    dest: str | None = None  # pick_place: entity to put `obj` on/in; push: entity to push toward
    offset: tuple[float, float] = (0.0, 0.0)  # extra xy offset of the destination
    distance: float = 0.0  # pull: metres to pull (+) or push back (-) along x


@dataclass(frozen=True)
class TaskSpec:
    instruction: str
    entities: tuple[tuple[str, Placement], ...]
    skills: tuple[Skill, ...]
    open_drawers: tuple[tuple[str, float], ...] = field(default_factory=tuple)


def _free(*names: str) -> tuple[tuple[str, Placement], ...]:
    return tuple((n, Placement()) for n in names)


def _spatial_tasks() -> list[TaskSpec]:
    bowl_at = {
        "between the plate and the ramekin": Placement("between", "plate", "ramekin"),
        "next to the ramekin": Placement("near", "ramekin"),
        "from table center": Placement("center"),
        "on the cookie box": Placement("on", "cookie box"),
        "in the top drawer of the wooden cabinet": Placement("in_drawer", "wooden cabinet"),
        "on the ramekin": Placement("on", "ramekin"),
        "next to the cookie box": Placement("near", "cookie box"),
        "on the stove": Placement("on", "stove"),
        "next to the plate": Placement("near", "plate"),
        "on the wooden cabinet": Placement("on", "wooden cabinet"),
    }
    tasks = []
    for where, placement in bowl_at.items():
        needs_cabinet = "cabinet" in where
        needs_stove = "stove" in where
        fixed = [("plate", Placement()), ("ramekin", Placement()), ("cookie box", Placement())]
        if needs_cabinet:
            fixed.insert(0, ("wooden cabinet", Placement("region", region=(-0.20, -0.08, -0.28, 0.28))))
        if needs_stove:
            fixed.insert(0, ("stove", Placement()))
        # The distractor bowl sits somewhere else, so the phrase is needed to pick the right one.
        entities = (*fixed, ("black bowl", placement), ("other black bowl", Placement()))
        drawers = (("wooden cabinet", 0.09),) if "drawer" in where else ()
        tasks.append(
            TaskSpec(
                instruction=f"pick up the black bowl {where} and place it on the plate",
                entities=entities,
                skills=(Skill("pick_place", "black bowl", "plate"),),
                open_drawers=drawers,
            )
        )
    return tasks


def _object_tasks() -> list[TaskSpec]:
    tasks = []
    for item_index, item in enumerate(GROCERIES):
        others = [GROCERIES[(item_index + k) % len(GROCERIES)] for k in (3, 5, 7)]
        tasks.append(
            TaskSpec(
                instruction=f"pick up the {item} and place it in the basket",
                entities=(("basket", Placement()), (item, Placement()), *_free(*others)),
                skills=(Skill("pick_place", item, "basket"),),
            )
        )
    return tasks


_GOAL_SCENE = (
    ("cabinet", Placement("region", region=(-0.20, -0.10, -0.28, 0.28))),
    ("stove", Placement()),
    ("bowl", Placement()),
    ("plate", Placement()),
    ("wine bottle", Placement()),
    ("cream cheese", Placement()),
    ("rack", Placement()),
)


def _goal_tasks() -> list[TaskSpec]:
    def goal(instruction: str, *skills: Skill) -> TaskSpec:
        return TaskSpec(instruction=instruction, entities=_GOAL_SCENE, skills=skills)

    return [
        goal("open the middle drawer of the cabinet", Skill("pull", "cabinet", distance=0.10)),
        goal("put the bowl on the stove", Skill("pick_place", "bowl", "stove")),
        goal("put the wine bottle on top of the cabinet", Skill("pick_place", "wine bottle", "cabinet")),
        goal(
            "open the top drawer and put the bowl inside",
            Skill("pull", "cabinet", distance=0.10),
            Skill("pick_place", "bowl", "cabinet/drawer"),
        ),
        goal("put the bowl on top of the cabinet", Skill("pick_place", "bowl", "cabinet")),
        goal("push the plate to the front of the stove", Skill("push", "plate", "stove", offset=(0.13, 0.0))),
        goal("put the cream cheese in the bowl", Skill("pick_place", "cream cheese", "bowl")),
        goal("turn on the stove", Skill("press", "stove")),
        goal("put the bowl on the plate", Skill("pick_place", "bowl", "plate")),
        goal("put the wine bottle on the rack", Skill("pick_place", "wine bottle", "rack")),
    ]


def _long_tasks() -> list[TaskSpec]:
    def pp(obj: str, dest: str, offset: tuple[float, float] = (0.0, 0.0)) -> Skill:
        return Skill("pick_place", obj, dest, offset=offset)

    return [
        TaskSpec(
            "put both the alphabet soup and the tomato sauce in the basket",
            _free("basket", "alphabet soup", "tomato sauce", "ketchup"),
            (pp("alphabet soup", "basket", (0.0, -0.03)), pp("tomato sauce", "basket", (0.0, 0.03))),
        ),
        TaskSpec(
            "put both the cream cheese box and the butter in the basket",
            _free("basket", "cream cheese box", "butter", "milk"),
            (pp("cream cheese box", "basket", (0.0, -0.03)), pp("butter", "basket", (0.0, 0.03))),
        ),
        TaskSpec(
            "turn on the stove and put the moka pot on it",
            _free("stove", "moka pot", "plate"),
            (Skill("press", "stove"), pp("moka pot", "stove")),
        ),
        TaskSpec(
            "put the black bowl in the bottom drawer of the cabinet and close it",
            (("cabinet", Placement("region", region=(-0.20, -0.10, -0.28, 0.28))), *_free("black bowl", "plate")),
            (pp("black bowl", "cabinet/drawer"), Skill("pull", "cabinet", distance=-0.09)),
            open_drawers=(("cabinet", 0.09),),
        ),
        TaskSpec(
            "put the white mug on the left plate and put the yellow and white mug on the right plate",
            (
                ("left plate", Placement("region", region=(-0.15, 0.15, 0.02, 0.28))),
                ("right plate", Placement("region", region=(-0.15, 0.15, -0.28, -0.02))),
                *_free("white mug", "yellow and white mug"),
            ),
            (pp("white mug", "left plate"), pp("yellow and white mug", "right plate")),
        ),
        TaskSpec(
            "pick up the book and place it in the back compartment of the caddy",
            _free("caddy", "book", "white mug"),
            (pp("book", "caddy", (-0.03, 0.0)),),
        ),
        TaskSpec(
            "put the white mug on the plate and put the chocolate pudding to the right of the plate",
            _free("plate", "white mug", "chocolate pudding"),
            (pp("white mug", "plate"), pp("chocolate pudding", "plate", (0.0, -0.10))),
        ),
        TaskSpec(
            "put both the alphabet soup and the cream cheese box in the basket",
            _free("basket", "alphabet soup", "cream cheese box", "orange juice"),
            (pp("alphabet soup", "basket", (0.0, -0.03)), pp("cream cheese box", "basket", (0.0, 0.03))),
        ),
        TaskSpec(
            "put both moka pots on the stove",
            _free("stove", "moka pot", "second moka pot"),
            (pp("moka pot", "stove", (0.0, -0.03)), pp("second moka pot", "stove", (0.0, 0.03))),
        ),
        TaskSpec(
            "put the yellow and white mug in the microwave and close it",
            (
                ("microwave", Placement("region", region=(-0.20, -0.08, -0.28, 0.28))),
                *_free("yellow and white mug", "white mug"),
            ),
            (pp("yellow and white mug", "microwave/drawer"), Skill("pull", "microwave", distance=-0.08)),
            open_drawers=(("microwave", 0.08),),
        ),
    ]


SUITES: dict[str, list[TaskSpec]] = {
    "libero_spatial_no_noops": _spatial_tasks(),
    "libero_object_no_noops": _object_tasks(),
    "libero_goal_no_noops": _goal_tasks(),
    "libero_10_no_noops": _long_tasks(),
}


def make_entity(name: str, pos: np.ndarray, yaw: float) -> Entity:
    base = name.removeprefix("other ")
    shape, color, size, accent = CATALOG[base]
    return Entity(
        name=name, shape=shape, color=color, size=size, pos=np.asarray(pos, dtype=np.float64), yaw=yaw, accent=accent
    )


def drawer_interior(cabinet: Entity) -> np.ndarray:
    """Point inside an opened drawer of `cabinet` where an object can rest."""
    return cabinet.pos + np.array([cabinet.size[0] + cabinet.drawer_opening / 2, 0.0, cabinet.size[2] * 0.35 + 0.01])


def sample_scene(task: TaskSpec, rng: np.random.Generator, max_tries: int = 200) -> dict[str, Entity]:
    """Place the task's entities for one episode (rejection sampling for non-overlapping footprints)."""
    for _ in range(max_tries):
        scene = _try_sample_scene(task, rng)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place the objects of task {task.instruction!r} without overlap")


def _try_sample_scene(task: TaskSpec, rng: np.random.Generator, tries_per_entity: int = 40) -> dict[str, Entity] | None:
    scene: dict[str, Entity] = {}
    drawers = dict(task.open_drawers)
    for name, placement in task.entities:
        for _ in range(tries_per_entity):
            entity = _try_place(name, placement, scene, drawers, rng)
            if entity is not None:
                scene[name] = entity
                break
        else:
            return None
    for name, opening in drawers.items():
        scene[name].drawer_opening = opening
    return scene


def _try_place(
    name: str, placement: Placement, scene: dict[str, Entity], drawers: dict[str, float], rng: np.random.Generator
) -> Entity | None:
    base = name.removeprefix("other ")
    radius = max(CATALOG[base][2][:2])
    yaw = float(rng.uniform(-0.5, 0.5)) if CATALOG[base][0] == "box" else 0.0
    base_z = TABLE_Z
    if placement.kind in ("free", "region", "center"):
        if placement.kind == "center":
            x0, x1, y0, y1 = -0.04, 0.04, -0.05, 0.05
        elif placement.region is not None:  # bounds of the centre
            x0, x1, y0, y1 = placement.region
        else:  # the whole footprint stays on the reachable table
            x0, x1, y0, y1 = TABLE_X[0] + radius, TABLE_X[1] - radius, TABLE_Y[0] + radius, TABLE_Y[1] - radius
        xy = rng.uniform([x0, y0], [x1, y1])
    elif placement.kind == "near":
        ref = scene[placement.ref]
        ang = rng.uniform(0, 2 * np.pi)
        xy = ref.pos[:2] + (ref.radius + radius + 0.035) * np.array([np.cos(ang), np.sin(ang)])
    elif placement.kind == "between":
        first, second = scene[placement.ref], scene[placement.ref2]
        if np.linalg.norm(first.pos[:2] - second.pos[:2]) < first.radius + second.radius + 2 * radius + 0.02:
            return None
        xy = (first.pos[:2] + second.pos[:2]) / 2
    elif placement.kind == "on":
        ref = scene[placement.ref]
        xy, base_z, yaw = ref.pos[:2].copy(), ref.top_z, yaw
    elif placement.kind == "in_drawer":
        ref = scene[placement.ref]
        ref.drawer_opening = drawers.get(placement.ref, 0.09)
        interior = drawer_interior(ref)
        xy, base_z = interior[:2], interior[2]
    else:
        raise ValueError(f"unknown placement kind {placement.kind!r}")
    if not (TABLE_X[0] - 0.05 <= xy[0] <= TABLE_X[1] + 0.05 and TABLE_Y[0] <= xy[1] <= TABLE_Y[1]):
        return None
    if placement.kind not in ("on", "in_drawer"):
        for other in scene.values():
            if np.linalg.norm(other.pos[:2] - xy) < other.radius + radius + 0.02:
                return None
    return make_entity(name, np.array([xy[0], xy[1], base_z]), yaw)
