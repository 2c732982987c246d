"""LIBERO environments, set up without surprises (no interactive prompt, no silent asset download).

`libero` asks a question on first import unless `$LIBERO_CONFIG_PATH/config.yaml` exists, and it downloads its
meshes and textures from the Hugging Face Hub when its `assets` folder is missing. `configure_libero` writes the
config file and checks the assets before LIBERO is imported; a missing asset folder is an error that says where to
put it.

Environment factories are addressed by an import path ("module:attribute") so that worker processes can build them:
an object with `num_tasks(suite)` and `make(suite, task_id, resolution, env_seed) -> EnvHandle`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ASSETS_ENV = "LIBERO_ASSETS_DIR"
DEFAULT_CONFIG_DIR = Path.home() / ".cache" / "vla-adapter-craft" / "libero"


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


def load_factory(path: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Instantiate an environment factory from "module:attribute" (a class or a ready object)."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"--env_factory must look like 'module:attribute' (got {path!r})")
    target = getattr(importlib.import_module(module_name), attribute)
    return target(**(kwargs or {})) if isinstance(target, type) else target
