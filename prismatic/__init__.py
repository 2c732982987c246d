"""Prismatic VLMs and the VLA-Adapter policy: models, LIBERO data and training.

Importing this package loads triton first when it is installed, so that TensorFlow (used only by the data
pipeline) can be imported before or after it without crashing; see :mod:`prismatic.util.import_safety`.
"""

from prismatic.util.import_safety import ensure_triton_loaded

ensure_triton_loaded()

__all__ = ["ensure_triton_loaded"]
