"""LIBERO environments, set up without surprises (no interactive prompt, no silent asset download).

`libero` asks a question on first import unless `$LIBERO_CONFIG_PATH/config.yaml` exists, and it downloads its
meshes and textures from the Hugging Face Hub when its `assets` folder is missing. `configure_libero` writes the
config file and checks the assets before LIBERO is imported; a missing asset folder is an error that says where to
put it.

Environment factories are addressed by an import path ("module:attribute") so that worker processes can build them:
an object with `num_tasks(suite)` and `make(suite, task_id, resolution, env_seed) -> EnvHandle`, and, for
`--initial_states_path`, `task_description(suite, task_id)` (read without building an environment).

MuJoCo and robosuite read `MUJOCO_GL` once, when they are imported: `apply_render_backend` sets it first, in every
process that renders.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ASSETS_ENV = "LIBERO_ASSETS_DIR"
DEFAULT_CONFIG_DIR = Path.home() / ".cache" / "vla-adapter-craft" / "libero"
DEFAULT_INITIAL_STATES = "DEFAULT"  # VLA-Adapter's spelling of "the suite's built-in initial states"
RENDER_BACKENDS = ("egl", "osmesa", "glfw")  # MUJOCO_GL values: EGL (GPU or CPU), OSMesa (pure CPU), a window


@dataclass
class EnvHandle:
    env: Any  # reset(), set_init_state(state) -> obs, step(action) -> (obs, reward, done, info), close()
    description: str  # the task's language instruction
    initial_states: Any  # indexable by trial


def libero_package_root() -> Path:
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the LIBERO simulator is not installed: run `bash setup.sh libero` (installs libero 0.1.1, robosuite "
            "1.4.0 and mujoco<3.10)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "libero"


def configure_libero(assets_dir: str | Path | None = None, config_dir: str | Path | None = None) -> Path:
    """Write LIBERO's config.yaml (non-interactively) and return the checked assets folder."""
    root = libero_package_root()
    config_dir = Path(config_dir or os.environ.get("LIBERO_CONFIG_PATH") or DEFAULT_CONFIG_DIR)
    assets = Path(assets_dir or os.environ.get(ASSETS_ENV) or root / "assets")
    config_file = config_dir / "config.yaml"
    if not config_file.is_file():
        config_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "benchmark_root": str(root),
            "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"),
            "datasets": str(root.parent / "datasets"),
            "assets": str(assets),
        }
        config_file.write_text(yaml.safe_dump(paths))
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    if not assets.is_dir() or not any(assets.iterdir()):
        raise FileNotFoundError(
            f"LIBERO assets not found at {assets}. The PyPI package ships no meshes/textures and would download them "
            "from the Hugging Face Hub. Copy the `assets` folder of the LIBERO repository (libero/libero/assets) "
            f"there, or anywhere and pass --libero_assets_dir DIR (or set {ASSETS_ENV})"
        )
    return assets


def apply_render_backend(backend: str | None) -> None:
    """Make this process render with `backend` (None: leave MUJOCO_GL alone). It must run before MuJoCo or robosuite
    is imported: they read MUJOCO_GL (and PyOpenGL reads PYOPENGL_PLATFORM) once, at import, so a later change would
    be silently ignored."""
    if not backend:
        return
    if backend not in RENDER_BACKENDS:
        raise ValueError(f"--render_backend must be one of {', '.join(RENDER_BACKENDS)} (got {backend!r})")
    current = os.environ.get("MUJOCO_GL")
    imported = [name for name in ("mujoco", "robosuite") if name in sys.modules]
    if imported and current != backend:
        raise RuntimeError(
            f"--render_backend {backend}: {imported[0]} is already imported in this process with MUJOCO_GL="
            f"{current!r}, and reads it only at import; choose the backend before importing the simulator"
        )
    os.environ["MUJOCO_GL"] = backend
    if backend == "glfw":
        os.environ.pop("PYOPENGL_PLATFORM", None)  # a window uses GLX, PyOpenGL's default
    else:
        os.environ["PYOPENGL_PLATFORM"] = backend  # mujoco.egl / mujoco.osmesa refuse any other value


class LiberoEnvFactory:
    """Real LIBERO environments (OffScreenRenderEnv), one per task."""

    def __init__(self, assets_dir: str | None = None) -> None:
        self.assets_dir = assets_dir

    def _libero(self) -> Any:
        assets = configure_libero(self.assets_dir)
        import libero.libero as libero_root

        libero_root._assets_path_cache = str(assets)  # use these assets, never the Hub download
        return libero_root

    def num_tasks(self, suite: str) -> int:
        self._libero()
        from libero.libero import benchmark

        return int(benchmark.get_benchmark_dict()[suite]().n_tasks)

    def task_description(self, suite: str, task_id: int) -> str:
        self._libero()
        from libero.libero import benchmark

        return str(benchmark.get_benchmark_dict()[suite]().get_task(task_id).language)

    def make(self, suite: str, task_id: int, resolution: int, env_seed: int) -> EnvHandle:
        libero_root = self._libero()
        from libero.libero import benchmark
        from libero.libero.envs import OffScreenRenderEnv

        task_suite = benchmark.get_benchmark_dict()[suite]()
        task = task_suite.get_task(task_id)
        bddl = Path(libero_root.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=resolution, camera_widths=resolution)
        env.seed(env_seed)
        return EnvHandle(env=env, description=task.language, initial_states=task_suite.get_task_init_states(task_id))


def initial_states_file(value: str | Path | None) -> Path | None:
    """`--initial_states_path` -> the file to read, or None for the suite's built-in states (unset, "" or DEFAULT)."""
    if value is None or str(value).strip() in ("", DEFAULT_INITIAL_STATES):
        return None
    return Path(value)


def read_initial_states(path: Path) -> dict[str, dict[str, Any]]:
    """VLA-Adapter's initial-states file: JSON `{task key: {"demo_<trial>": {"success": bool, "initial_state":
    [numbers]}}}`, the task key being the task's instruction with spaces replaced by underscores. Only JSON is read:
    a state file is data, and unpickling a file runs whatever code it holds."""
    flag = f"--initial_states_path {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: no such file (pass DEFAULT, or omit the flag, for the suite's own states)")
    if path.suffix.lower() != ".json":
        raise ValueError(
            f"{flag}: expected a .json file in VLA-Adapter's format; other formats (pickles in particular) are "
            "never loaded"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not data or not all(isinstance(demos, dict) for demos in data.values()):
        raise ValueError(
            f'{flag}: expected {{"<task_instruction_with_underscores>": {{"demo_0": {{"success": true, '
            f'"initial_state": [...]}}, ...}}, ...}}'
        )
    return data


def task_key(description: str) -> str:
    """The key of a task in an initial-states file (VLA-Adapter's rule)."""
    return description.replace(" ", "_")


def select_initial_states(
    data: dict[str, dict[str, Any]], path: Path, descriptions: dict[int, str], num_trials: int
) -> dict[tuple[int, int], np.ndarray | None]:
    """The initial state of every (task, trial) from an initial-states file; None for a trial whose expert
    demonstration failed, which VLA-Adapter's evaluation skips. Every problem is reported before an episode runs."""
    flag = f"--initial_states_path {path}"
    states: dict[tuple[int, int], np.ndarray | None] = {}
    for task_id, description in descriptions.items():
        key = task_key(description)
        if key not in data:
            known = ", ".join(sorted(data)[:5]) + (", ..." if len(data) > 5 else "")
            raise ValueError(f"{flag} has no entry {key!r} for task {task_id} ({description!r}); it has: {known}")
        for trial in range(num_trials):
            demo = data[key].get(f"demo_{trial}")
            where = f"{flag}: {key}/demo_{trial}"
            if demo is None:
                raise ValueError(
                    f"{where} is missing (--num_trials_per_task {num_trials} needs demo_0..demo_{num_trials - 1})"
                )
            if not isinstance(demo, dict) or not isinstance(demo.get("success"), bool) or "initial_state" not in demo:
                raise ValueError(f"{where} needs 'success' (true or false) and 'initial_state' (a list of numbers)")
            try:
                state = np.asarray(demo["initial_state"], dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: 'initial_state' is not a list of numbers ({err})") from err
            if state.ndim != 1 or state.size == 0 or not np.isfinite(state).all():
                raise ValueError(f"{where}: 'initial_state' must be a non-empty flat list of finite numbers")
            states[(task_id, trial)] = state if demo["success"] else None
    return states


def resolve_factory(path: str) -> Any:
    """The class or object an `--env_factory` "module:attribute" names, imported (not instantiated), with a one-line
    error naming the flag when the module or the attribute cannot be found."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--env_factory must look like 'module:attribute' (got {path!r})")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(
            f"--env_factory {path}: cannot import {module_name!r} ({err}); the module must be importable from the "
            "working directory or PYTHONPATH"
        ) from err
    if not hasattr(module, attribute):
        raise ValueError(f"--env_factory {path}: module {module_name!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def load_factory(path: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Instantiate an environment factory from "module:attribute" (a class or a ready object)."""
    target = resolve_factory(path)
    return target(**(kwargs or {})) if isinstance(target, type) else target
