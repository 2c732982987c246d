"""Scripted demonstrator: turns a task's skills into LIBERO-style delta-EEF actions and simulates the robot.

Actions follow LIBERO's OSC_POSE convention: 3 position deltas and 3 rotation deltas, each in [-1, 1] (at most
0.9375 / 0.375 here, like the real demonstrations), plus the gripper command (-1 open, +1 close). The simulated
end effector moves by `POS_SCALE` metres (`ROT_SCALE` radians) per unit of action, and the states recorded in
the dataset are integrated from the (noisy) actions actually taken, so state and motion always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from prismatic.synthetic.world import TABLE_Z, Entity, Skill, TaskSpec, drawer_interior

POS_SCALE = 0.0125  # metres per unit of position action per step
ROT_SCALE = 0.125  # radians per unit of rotation action per step
MAX_POS_ACTION = 0.9375
MAX_ROT_ACTION = 0.375
FINGER_OPEN = 0.039  # LIBERO's gripper qpos when fully open: [0.039, -0.039]
FINGER_SPEED = 0.008
HOVER = 0.10
START_POS = np.array([-0.10, 0.0, 1.16])
MAX_SEGMENT_STEPS = 250


@dataclass
class RobotState:
    pos: np.ndarray
    rpy: np.ndarray  # roll, pitch, yaw offsets from the straight-down grasp orientation
    finger: float = FINGER_OPEN
    gripper_closed: bool = False
    held: tuple[Entity, str, np.ndarray] | None = None  # (entity, mode, offset) mode: carry | slide | drawer

    def proprio(self) -> np.ndarray:
        """LIBERO `state`: eef position (3), axis-angle (3), gripper qpos (2)."""
        return np.concatenate([self.pos, axis_angle(self.rpy), [self.finger, -self.finger]]).astype(np.float32)


@dataclass
class Segment:
    """Drive the end effector to `target` (or hold still for `hold` steps while the gripper acts)."""

    target: np.ndarray | None = None
    yaw: float | None = None
    hold: int = 0
    close: bool | None = None  # gripper command to switch to at the start of this segment
    on_start: Callable[[RobotState], None] | None = None
    on_end: Callable[[RobotState], None] | None = None


def axis_angle(rpy: np.ndarray) -> np.ndarray:
    """Axis-angle of Rz(yaw) Ry(pitch) Rx(roll) Rx(pi): the gripper pointing down, as LIBERO reports it."""
    roll, pitch, yaw = rpy

    def rx(theta: float) -> np.ndarray:
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        return np.array([[1, 0, 0], [0, cos_t, -sin_t], [0, sin_t, cos_t]])

    def ry(theta: float) -> np.ndarray:
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        return np.array([[cos_t, 0, sin_t], [0, 1, 0], [-sin_t, 0, cos_t]])

    def rz(theta: float) -> np.ndarray:
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        return np.array([[cos_t, -sin_t, 0], [sin_t, cos_t, 0], [0, 0, 1]])

    rot = rz(yaw) @ ry(pitch) @ rx(roll) @ rx(np.pi)
    # Rotation matrix -> quaternion (qw >= 0) -> axis-angle, robust near 180 degrees.
    qw = np.sqrt(max(0.0, 1 + rot[0, 0] + rot[1, 1] + rot[2, 2])) / 2
    qx = np.copysign(np.sqrt(max(0.0, 1 + rot[0, 0] - rot[1, 1] - rot[2, 2])) / 2, rot[2, 1] - rot[1, 2])
    qy = np.copysign(np.sqrt(max(0.0, 1 - rot[0, 0] + rot[1, 1] - rot[2, 2])) / 2, rot[0, 2] - rot[2, 0])
    qz = np.copysign(np.sqrt(max(0.0, 1 - rot[0, 0] - rot[1, 1] + rot[2, 2])) / 2, rot[1, 0] - rot[0, 1])
    if abs(qw) < 1e-9 and qx < 0:  # keep the axis sign stable at exactly 180 degrees
        qx, qy, qz = -qx, -qy, -qz
    vec = np.array([qx, qy, qz])
    norm = np.linalg.norm(vec)
    angle = 2 * np.arctan2(norm, qw)
    return vec / norm * angle if norm > 1e-9 else np.zeros(3)


def joint_state(robot: RobotState) -> np.ndarray:
    """Seven joint angles of a smooth pseudo inverse kinematics of the end-effector pose."""
    pos_x, pos_y, pos_z = robot.pos
    roll, pitch, yaw = robot.rpy
    return np.array(
        [
            np.arctan2(pos_y, pos_x + 0.55) + 0.3 * yaw,
            0.4 + 1.6 * (pos_x + 0.1) - 0.8 * (pos_z - 1.05),
            0.15 * yaw - 0.5 * pos_y,
            -2.3 + 2.0 * (pos_x + 0.1) + 1.2 * (pos_z - 1.05),
            0.6 * roll + 0.2 * pos_y,
            2.2 - 0.9 * (pos_z - 1.05) + 0.5 * pitch,
            0.78 + yaw + 0.2 * roll,
        ],
        dtype=np.float32,
    )


@dataclass
class EpisodeRecorder:
    """Per-step records produced while a task is executed."""

    states: list[np.ndarray] = field(default_factory=list)
    joints: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)


class Demonstrator:
    """Executes a task on a sampled scene, calling `observe(robot, scene)` before every action."""

    def __init__(self, task: TaskSpec, scene: dict[str, Entity], rng: np.random.Generator):
        self.task, self.scene, self.rng = task, scene, rng
        self.robot = RobotState(
            pos=START_POS + rng.uniform([-0.02, -0.03, -0.02], [0.02, 0.03, 0.02]),
            rpy=np.array([*rng.uniform(-0.05, 0.05, size=2), rng.uniform(-0.12, 0.12)]),
        )
        self._noise = np.zeros(6)

    # -- skills -> segments --------------------------------------------------------------------------------
    def _travel_z(self, *heights: float) -> float:
        return max(TABLE_Z + 0.20, *(h + 0.07 for h in heights))

    def _grasp_height(self, entity: Entity) -> float:
        return float(np.clip(entity.size[2] * 0.6, 0.008, 0.06))

    def _grasp_yaw(self, entity: Entity) -> float | None:
        return float(entity.yaw) if entity.shape == "box" else None

    def _pick_place(self, skill: Skill) -> Iterator[Segment]:
        obj = self.scene[skill.obj]
        if skill.dest is not None and skill.dest.endswith("/drawer"):
            surface = drawer_interior(self.scene[skill.dest.removesuffix("/drawer")])
            dest_xy, dest_z = surface[:2] + skill.offset, float(surface[2])
        else:
            dest = self.scene[skill.dest]
            dest_xy, dest_z = dest.pos[:2] + skill.offset, dest.top_z
        grasp_h = self._grasp_height(obj)
        travel = self._travel_z(obj.top_z, dest_z + obj.size[2], self.robot.pos[2] - 0.07)
        yaw = self._grasp_yaw(obj)
        xy = obj.pos[:2].copy()
        yield Segment(np.array([*xy, obj.top_z + HOVER]), yaw=yaw)
        yield Segment(np.array([*xy, obj.pos[2] + grasp_h]), yaw=yaw)
        yield Segment(hold=6, close=True, on_start=lambda r: self._attach(r, obj, "carry"))
        yield Segment(np.array([*xy, travel]))
        yield Segment(np.array([*dest_xy, travel]))
        yield Segment(np.array([*dest_xy, dest_z + grasp_h + 0.01]))

        def drop(robot: RobotState) -> None:
            robot.held = None
            obj.pos[:] = [dest_xy[0], dest_xy[1], dest_z]

        yield Segment(hold=5, close=False, on_start=drop)
        yield Segment(np.array([*dest_xy, dest_z + grasp_h + 0.07]))

    def _push(self, skill: Skill) -> Iterator[Segment]:
        obj, dest = self.scene[skill.obj], self.scene[skill.dest]
        goal = dest.pos[:2] + skill.offset
        direction = goal - obj.pos[:2]
        direction = direction / max(np.linalg.norm(direction), 1e-6)
        standoff = obj.radius + 0.03
        behind = obj.pos[:2] - direction * standoff
        low = TABLE_Z + 0.02
        yield Segment(hold=3, close=True)
        yield Segment(np.array([*behind, self._travel_z(obj.top_z)]))
        yield Segment(np.array([*behind, low]))
        yield Segment(
            np.array([*(goal - direction * standoff), low]),
            on_start=lambda r: self._attach(r, obj, "slide"),
            on_end=lambda r: setattr(r, "held", None),
        )
        yield Segment(np.array([*(goal - direction * standoff), low + 0.08]))

    def _press(self, skill: Skill) -> Iterator[Segment]:
        target = self.scene[skill.obj]
        knob = target.pos[:2] + np.array([target.size[0] * 0.5, target.size[1] * 0.5])
        yield Segment(hold=3, close=True)
        yield Segment(np.array([*knob, target.top_z + HOVER]))
        yield Segment(np.array([*knob, target.top_z + 0.012]), on_end=lambda r: setattr(target, "active", True))
        yield Segment(np.array([*knob, target.top_z + 0.09]))

    def _pull(self, skill: Skill) -> Iterator[Segment]:
        cab = self.scene[skill.obj]
        handle = cab.pos + np.array([cab.size[0] + cab.drawer_opening + 0.012, 0.0, cab.size[2] * 0.45])
        yield Segment(np.array([handle[0] + 0.04, handle[1], handle[2] + 0.07]), yaw=0.0)
        yield Segment(handle.copy(), yaw=0.0)
        yield Segment(hold=5, close=True, on_start=lambda r: self._attach(r, cab, "drawer"))
        yield Segment(handle + np.array([skill.distance, 0.0, 0.0]), yaw=0.0)
        yield Segment(hold=4, close=False, on_start=lambda r: setattr(r, "held", None))
        end = handle + np.array([skill.distance + 0.04, 0.0, 0.07])
        yield Segment(end)

    def segments(self) -> Iterator[Segment]:
        handlers = {"pick_place": self._pick_place, "push": self._push, "press": self._press, "pull": self._pull}
        for skill in self.task.skills:
            yield from handlers[skill.kind](skill)

    # -- simulation ----------------------------------------------------------------------------------------
    def _attach(self, robot: RobotState, entity: Entity, mode: str) -> None:
        ref = np.array([entity.drawer_opening, 0.0, 0.0]) if mode == "drawer" else entity.pos
        robot.held = (entity, mode, ref - robot.pos)

    def _control(self, seg: Segment, hold_pos: np.ndarray) -> tuple[np.ndarray, bool]:
        robot = self.robot
        target = hold_pos if seg.target is None else seg.target
        err = target - robot.pos
        a_pos = np.clip(0.7 * err / POS_SCALE, -MAX_POS_ACTION, MAX_POS_ACTION)
        a_rot = np.clip(0.5 * (0.0 - robot.rpy) / ROT_SCALE, -MAX_ROT_ACTION, MAX_ROT_ACTION)
        yaw_ok = True
        if seg.yaw is not None:
            yaw_err = (seg.yaw - robot.rpy[2] + np.pi) % (2 * np.pi) - np.pi
            a_rot[2] = np.clip(0.7 * yaw_err / ROT_SCALE, -MAX_ROT_ACTION, MAX_ROT_ACTION)
            yaw_ok = abs(yaw_err) < 0.04
        else:
            a_rot[2] = 0.0
        reached = bool(np.linalg.norm(err) < 0.006 and yaw_ok)
        return np.concatenate([a_pos, a_rot]), reached

    def _apply(self, action: np.ndarray) -> None:
        robot = self.robot
        robot.pos = robot.pos + POS_SCALE * action[:3]
        robot.pos[2] = max(robot.pos[2], TABLE_Z + 0.005)
        robot.rpy = robot.rpy + ROT_SCALE * action[3:6]
        closed = action[6] > 0
        if robot.held is not None and robot.held[1] == "carry":
            # Fingers stop on the object (a bowl is grasped by its rim), clearly short of fully open.
            goal = float(np.clip(min(robot.held[0].size[:2]) * 0.6, 0.008, 0.025))
        else:
            goal = 0.0 if closed else FINGER_OPEN
        robot.finger = float(np.clip(goal, robot.finger - FINGER_SPEED, robot.finger + FINGER_SPEED))
        if robot.held is not None:
            held_entity, mode, offset = robot.held
            if mode == "carry":
                held_entity.pos[:] = robot.pos + offset
            elif mode == "slide":
                held_entity.pos[:2] = robot.pos[:2] + offset[:2]
            else:  # drawer: opening follows the hand along x
                held_entity.drawer_opening = float(np.clip(robot.pos[0] + offset[0], 0.0, 0.14))

    def run(self, observe: Callable[[RobotState, dict[str, Entity]], None]) -> EpisodeRecorder:
        """Execute every segment; `observe` is called with the state that each recorded action acts on."""
        rec = EpisodeRecorder()
        robot = self.robot
        for seg in self.segments():
            if seg.close is not None:
                robot.gripper_closed = seg.close
            if seg.on_start is not None:
                seg.on_start(robot)
            hold_pos = robot.pos.copy()
            for step in range(MAX_SEGMENT_STEPS):
                control, reached = self._control(seg, hold_pos)
                if seg.target is not None and reached:
                    break
                if seg.target is None and step >= seg.hold:
                    break
                self._noise = 0.75 * self._noise + self.rng.normal(0, [0.04, 0.04, 0.04, 0.01, 0.01, 0.01])
                action = np.concatenate([control + self._noise, [1.0 if robot.gripper_closed else -1.0]])
                action[:3] = np.clip(action[:3], -MAX_POS_ACTION, MAX_POS_ACTION)
                action[3:6] = np.clip(action[3:6], -MAX_ROT_ACTION, MAX_ROT_ACTION)
                observe(robot, self.scene)
                rec.states.append(robot.proprio())
                rec.joints.append(joint_state(robot))
                rec.actions.append(action.astype(np.float32))
                self._apply(action)
            else:
                raise RuntimeError(f"segment did not converge in {MAX_SEGMENT_STEPS} steps: {seg}")
            if seg.on_end is not None:
                seg.on_end(robot)
        return rec
