"""One synthetic LIBERO demonstration: sample a scene, run the demonstrator, render both cameras per step."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from prismatic.synthetic.controller import Demonstrator, RobotState
from prismatic.synthetic.render import (
    AGENT_CAMERA,
    make_table_texture,
    render_background,
    render_scene,
    wrist_camera,
)
from prismatic.synthetic.world import SUITES, Entity, sample_scene

SUITE_IDS = {name: i for i, name in enumerate(SUITES)}


@dataclass(frozen=True)
class EpisodeRequest:
    """Identifies one episode; together with `seed` it fully determines its content."""

    dataset_name: str
    task_index: int
    episode_index: int
    seed: int
    jpeg_quality: int = 95


def task_slug(instruction: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", instruction.lower()).strip("_")


def episode_rng(req: EpisodeRequest) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([req.seed, SUITE_IDS[req.dataset_name], req.task_index, req.episode_index])
    )


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate_episode(req: EpisodeRequest) -> dict[str, Any]:
    """The episode as a nested dict in the LIBERO RLDS feature layout (images as JPEG bytes)."""
    task = SUITES[req.dataset_name][req.task_index]
    rng = episode_rng(req)
    scene = sample_scene(task, rng)
    lighting = float(rng.uniform(0.85, 1.15))
    texture = make_table_texture(rng, lighting)
    wall = tuple(int(c * lighting) for c in rng.uniform([150, 150, 150], [215, 210, 200]))
    background = render_background(AGENT_CAMERA, texture, wall)
    images: list[bytes] = []
    wrist_images: list[bytes] = []

    def observe(robot: RobotState, entities: dict[str, Entity]) -> None:
        items = list(entities.values())
        agent = render_scene(AGENT_CAMERA, background, items, lighting, (robot.pos, robot.rpy[2], robot.finger))
        cam = wrist_camera(robot.pos, robot.rpy[2])
        wrist = render_scene(cam, render_background(cam, texture, wall), items, lighting, wrist_finger_gap=robot.finger)
        images.append(encode_jpeg(agent, req.jpeg_quality))
        wrist_images.append(encode_jpeg(wrist, req.jpeg_quality))

    rec = Demonstrator(task, scene, rng).run(observe)
    num_steps = len(rec.actions)
    steps = [
        {
            "observation": {
                "image": images[step],
                "wrist_image": wrist_images[step],
                "state": rec.states[step],
                "joint_state": rec.joints[step],
            },
            "action": rec.actions[step],
            "discount": np.float32(1.0),
            "reward": np.float32(1.0 if step == num_steps - 1 else 0.0),
            "is_first": step == 0,
            "is_last": step == num_steps - 1,
            "is_terminal": step == num_steps - 1,
            "language_instruction": task.instruction,
        }
        for step in range(num_steps)
    ]
    suite = req.dataset_name.removesuffix("_no_noops")
    file_path = f"/synthetic_libero/{suite}/{task_slug(task.instruction)}_demo.hdf5"
    return {"steps": steps, "episode_metadata": {"file_path": file_path}}
