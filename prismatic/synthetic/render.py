"""A small rasteriser for the synthetic LIBERO scenes: a third-person camera and a wrist camera.

Scenes are boxes and cylinders on a wooden table plus the gripper. Everything is projected with pinhole cameras,
so object positions, heights and the gripper's height (through its shadow and apparent size) are visible in the
pixels. Faces are filled with PIL's polygon rasteriser, back to front, which keeps a 256x256 frame at about a
millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from prismatic.synthetic.world import TABLE_Z, Entity

IMAGE_SIZE = 256
_TABLE_HALF_EXTENT = 0.5  # metres of table texture around the origin
_TEXTURE_RES = 0.002  # metres per texel
_ACTIVE_ACCENT = (235, 70, 30)  # e.g. a stove burner that has been turned on
_RING_POINTS = 12

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: world point p -> pixel (u, v) = f * (R (p - origin))_{x,y} / depth + centre."""

    origin: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) rows = camera right, down, forward axes in world coordinates
    focal: float
    size: int = IMAGE_SIZE

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) and depths (N,) of world points (N, 3)."""
        cam = (np.asarray(points, dtype=np.float64) - self.origin) @ self.rotation.T
        depth = np.maximum(cam[:, 2], 1e-3)
        uv = self.focal * cam[:, :2] / depth[:, None] + self.size / 2.0
        return uv, depth


def look_at(origin: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """Rotation whose rows are the camera's right, down and forward axes for a camera at `origin` facing `target`."""
    up = np.array([0.0, 0.0, 1.0]) if up is None else up
    forward = target - origin
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


# Third-person ("agentview") camera: in front of the table, looking back at the robot and down at the table.
_AGENT_ORIGIN = np.array([0.62, 0.0, 1.48])
AGENT_CAMERA = Camera(origin=_AGENT_ORIGIN, rotation=look_at(_AGENT_ORIGIN, np.array([-0.06, 0.0, 0.9])), focal=320.0)
WRIST_FOCAL = 150.0
WRIST_CAMERA_HEIGHT = 0.08  # metres above the fingertips


def wrist_camera(eef_pos: np.ndarray, yaw: float) -> Camera:
    """Camera on the hand looking straight down; image 'up' is the gripper's approach direction (rotates with yaw)."""
    cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
    approach = np.array([cos_yaw, sin_yaw, 0.0])  # shown as image "up"
    right = np.array([sin_yaw, -cos_yaw, 0.0])  # = (-approach) x forward, keeps the frame right-handed
    forward = np.array([0.0, 0.0, -1.0])
    origin = np.asarray(eef_pos, dtype=np.float64) + np.array([0.0, 0.0, WRIST_CAMERA_HEIGHT])
    return Camera(origin=origin, rotation=np.stack([right, -approach, forward]), focal=WRIST_FOCAL)


def make_table_texture(rng: np.random.Generator, lighting: float) -> Image.Image:
    """Wood-like table texture covering [-0.5, 0.5]^2 metres (row = world x, column = world y); varies per episode."""
    num_texels = int(2 * _TABLE_HALF_EXTENT / _TEXTURE_RES)
    xs = np.linspace(-_TABLE_HALF_EXTENT, _TABLE_HALF_EXTENT, num_texels, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    phase = rng.uniform(0, 2 * np.pi)
    grain = 0.07 * np.sin(2 * np.pi * gx / 0.045 + 2.5 * np.sin(2 * np.pi * gy / 0.37 + phase))
    base = np.array(rng.uniform([150, 105, 65], [185, 135, 90]), dtype=np.float32)
    tex = base[None, None, :] * (1.0 + grain[..., None]) * lighting
    tex += rng.normal(0.0, 4.0, size=tex.shape).astype(np.float32)
    edge = (np.abs(gx) > 0.42) | (np.abs(gy) > 0.46)  # darker border: the workspace limits are visible
    tex[edge] *= 0.55
    return Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8))


def render_background(camera: Camera, texture: Image.Image, wall_color: RGB) -> Image.Image:
    """Table plane as `camera` sees it (rays that miss the table show the wall)."""
    size = camera.size
    if abs(camera.rotation[2, 2] + 1.0) < 1e-9:
        # Looking straight down: the table is an affine image of the texture; let PIL resample it.
        depth = camera.origin[2] - TABLE_Z
        scale = depth / camera.focal / _TEXTURE_RES  # texels per output pixel
        right, down = camera.rotation[0], camera.rotation[1]
        off = _TABLE_HALF_EXTENT / _TEXTURE_RES
        # output pixel (u, v) -> world (x, y) -> texel (column = y, row = x)
        col = (
            scale * right[1],
            scale * down[1],
            (camera.origin[1]) / _TEXTURE_RES + off - scale * size / 2 * (right[1] + down[1]),
        )
        row = (
            scale * right[0],
            scale * down[0],
            (camera.origin[0]) / _TEXTURE_RES + off - scale * size / 2 * (right[0] + down[0]),
        )
        return texture.transform((size, size), Image.AFFINE, (*col, *row), resample=Image.NEAREST, fillcolor=wall_color)
    pixel_v, pixel_u = np.mgrid[0:size, 0:size].astype(np.float32)
    dirs_cam = np.stack(
        [(pixel_u - size / 2) / camera.focal, (pixel_v - size / 2) / camera.focal, np.ones_like(pixel_u)], axis=-1
    )
    dirs = dirs_cam @ camera.rotation.astype(np.float32)  # camera -> world
    dz = dirs[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ray_dist = (TABLE_Z - camera.origin[2]) / dz
    wx = camera.origin[0] + ray_dist * dirs[..., 0]
    wy = camera.origin[1] + ray_dist * dirs[..., 1]
    hit = (dz < -1e-6) & (ray_dist > 0) & (np.abs(wx) < _TABLE_HALF_EXTENT) & (np.abs(wy) < _TABLE_HALF_EXTENT)
    tex = np.asarray(texture)
    tex_size = tex.shape[0]
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = wall_color
    ix = np.clip(((wx[hit] + _TABLE_HALF_EXTENT) / _TEXTURE_RES).astype(np.int32), 0, tex_size - 1)
    iy = np.clip(((wy[hit] + _TABLE_HALF_EXTENT) / _TEXTURE_RES).astype(np.int32), 0, tex_size - 1)
    img[hit] = tex[ix, iy]
    return Image.fromarray(img)


def _shade(color: RGB | tuple[float, ...], factor: float) -> RGB:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in color)  # type: ignore[return-value]


def _polygon(draw: ImageDraw.ImageDraw, uv: np.ndarray, fill: RGB | tuple[int, int, int, int]) -> None:
    draw.polygon([(float(x), float(y)) for x, y in uv], fill=fill)


def _box_corners(pos: np.ndarray, half: tuple[float, float], yaw: float, z0: float, z1: float) -> np.ndarray:
    cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
    hx, hy = half
    corners = []
    for corner_z in (z0, z1):
        for dx, dy in ((-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)):
            corners.append([pos[0] + cos_yaw * dx - sin_yaw * dy, pos[1] + sin_yaw * dx + cos_yaw * dy, corner_z])
    return np.array(corners)


def _ring(center_x: float, center_y: float, height: float, radius: float) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, _RING_POINTS, endpoint=False)
    return np.stack(
        [center_x + radius * np.cos(ang), center_y + radius * np.sin(ang), np.full(_RING_POINTS, height)], axis=1
    )


def _draw_prism(
    draw: ImageDraw.ImageDraw, camera: Camera, bottom: np.ndarray, top: np.ndarray, side: RGB, cap: RGB
) -> None:
    """A convex prism given its bottom and top outlines (same vertex order): sides, then the top face.

    The union of the projected side quads is the prism's silhouette, so no hull computation is needed.
    """
    num_sides = len(bottom)
    uv, _ = camera.project(np.concatenate([bottom, top]))
    lo, hi = uv[:num_sides], uv[num_sides:]
    _polygon(draw, lo, side)
    for idx in range(num_sides):
        next_idx = (idx + 1) % num_sides
        _polygon(draw, np.array([lo[idx], lo[next_idx], hi[next_idx], hi[idx]]), side)
    _polygon(draw, hi, cap)


def draw_entity(draw: ImageDraw.ImageDraw, camera: Camera, entity: Entity, lighting: float) -> None:
    """Draw one box or cylinder: darker sides, lit top face, optional accent on the top."""
    color = _shade(entity.color, lighting)
    accent = None if entity.accent is None else _shade(_ACTIVE_ACCENT if entity.active else entity.accent, lighting)
    z0, z1 = entity.pos[2], entity.pos[2] + entity.size[2]
    if entity.shape == "box":
        half = (entity.size[0], entity.size[1])
        corners = _box_corners(entity.pos, half, entity.yaw, z0, z1)
        _draw_prism(draw, camera, corners[:4], corners[4:], _shade(color, 0.62), color)
        if accent is not None:
            inner = _box_corners(entity.pos, (half[0] * 0.7, half[1] * 0.7), entity.yaw, z1, z1)[4:]
            _polygon(draw, camera.project(inner)[0], accent)
    else:
        radius = entity.size[0]
        ring_lo, ring_hi = (
            _ring(entity.pos[0], entity.pos[1], z0, radius),
            _ring(entity.pos[0], entity.pos[1], z1, radius),
        )
        _draw_prism(draw, camera, ring_lo, ring_hi, _shade(color, 0.62), color)
        if accent is not None:
            _polygon(draw, camera.project(_ring(entity.pos[0], entity.pos[1], z1, radius * 0.62))[0], accent)
    if entity.drawer_opening > 0.0:
        # An opened drawer slides out of the cabinet's front face (+x) at mid height.
        drawer = Entity(
            entity.name + "/drawer",
            "box",
            (120, 85, 55),
            (entity.drawer_opening / 2, entity.size[1] * 0.8, entity.size[2] * 0.3),
            entity.pos + np.array([entity.size[0] + entity.drawer_opening / 2, 0.0, entity.size[2] * 0.35]),
            0.0,
            accent=(70, 50, 35),
        )
        draw_entity(draw, camera, drawer, lighting)


def draw_gripper(
    draw: ImageDraw.ImageDraw, camera: Camera, eef: np.ndarray, yaw: float, finger_gap: float, lighting: float
) -> None:
    """Third-person view of the gripper: a shadow on the table, the wrist link, the palm and two fingers."""
    _polygon(draw, camera.project(_ring(eef[0], eef[1], TABLE_Z + 0.001, 0.035))[0], (0, 0, 0, 90))
    cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
    across = np.array([-sin_yaw, cos_yaw, 0.0])
    up = np.array([0.0, 0.0, 1.0])

    def slab(center: np.ndarray, half_width: float, z0: float, z1: float, color: RGB) -> None:
        quad = np.array(
            [
                center + half_width * across + z0 * up,
                center - half_width * across + z0 * up,
                center - half_width * across + z1 * up,
                center + half_width * across + z1 * up,
            ]
        )
        _polygon(draw, camera.project(quad)[0], _shade(color, lighting))

    slab(eef, 0.02, 0.04, 0.40, (200, 200, 205))
    slab(eef, 0.05, 0.03, 0.055, (60, 60, 65))
    for side in (1.0, -1.0):
        slab(eef + side * (finger_gap + 0.006) * across, 0.006, 0.0, 0.035, (45, 45, 50))


def draw_wrist_fingers(draw: ImageDraw.ImageDraw, size: int, finger_gap: float) -> None:
    """The two fingertips as the wrist camera sees them: fixed in the image, apart by the gripper opening."""
    half = finger_gap * WRIST_FOCAL / WRIST_CAMERA_HEIGHT
    for side in (1.0, -1.0):
        cx = size / 2 + side * (half + 6)
        draw.polygon([(cx - 7, size), (cx + 7, size), (cx + 5, size * 0.62), (cx - 5, size * 0.62)], fill=(40, 40, 45))


def render_scene(
    camera: Camera,
    background: Image.Image,
    entities: list[Entity],
    lighting: float,
    gripper: tuple[np.ndarray, float, float] | None = None,
    wrist_finger_gap: float | None = None,
) -> np.ndarray:
    """Draw `entities` over `background`, farthest first; returns uint8 (H, W, 3).

    `gripper` = (position, yaw, finger gap) draws the gripper in a third-person view; `wrist_finger_gap` draws
    the fingertips of a wrist view on top of everything.
    """
    img = background.copy()
    draw = ImageDraw.Draw(img, "RGBA")
    drawables: list[tuple[float, Entity | None]] = []
    for entity in entities:
        top = entity.pos + np.array([0.0, 0.0, entity.size[2]])
        _, depth = camera.project(top[None])
        if (top - camera.origin) @ camera.rotation[2] > 0.02:  # in front of the camera
            drawables.append((float(depth[0]), entity))
    if gripper is not None:
        _, depth = camera.project(gripper[0][None])
        drawables.append((float(depth[0]) - 0.03, None))
    for _, entity in sorted(drawables, key=lambda d: -d[0]):
        if entity is None:
            assert gripper is not None
            draw_gripper(draw, camera, gripper[0], gripper[1], gripper[2], lighting)
        else:
            draw_entity(draw, camera, entity, lighting)
    if wrist_finger_gap is not None:
        draw_wrist_fingers(draw, camera.size, wrist_finger_gap)
    return np.asarray(img)
