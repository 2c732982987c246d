"""Make the import order of TensorFlow and triton irrelevant.

With the CUDA build of torch, loading triton's ``libtriton.so`` *after* TensorFlow kills the process with a
segmentation fault: TensorFlow loads its bundled LLVM with ``RTLD_GLOBAL``, and triton's static initialisers then
bind to TensorFlow's LLVM symbols instead of their own (seen with tensorflow-cpu 2.20/2.21, torch 2.14.1,
triton 3.8; torchvision, timm and ``torch.compile`` all import triton).

So:
* ``import prismatic`` loads triton right away when it is installed (0.2 s); any later TensorFlow import is safe.
* If TensorFlow was already imported (by the user's script), triton is loaded with ``RTLD_DEEPBIND`` so that it
  resolves its own LLVM symbols first; this is the only way to load it at all in that process.
* :func:`import_tensorflow` is the one place in this project that imports TensorFlow; it does the above first,
  hides GPUs from TensorFlow (it only feeds data) and bounds its thread pools.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType


def triton_installed() -> bool:
    """True when the ``triton`` package can be imported (CUDA builds of torch ship it)."""
    return "triton" in sys.modules or importlib.util.find_spec("triton") is not None


def ensure_triton_loaded() -> bool:
    """Load triton now so that TensorFlow can never be loaded before it; return whether triton is loaded."""
    if "triton" in sys.modules:
        return True
    if not triton_installed():
        return False
    if "tensorflow" in sys.modules and hasattr(os, "RTLD_DEEPBIND"):
        # TensorFlow is already in the process: a plain import would segfault (see module docstring).
        flags = sys.getdlopenflags()
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        try:
            import triton
        finally:
            sys.setdlopenflags(flags)
    else:
        import triton
    del triton
    return True


_TF_CONFIGURED = False


def import_tensorflow(num_threads: int | None = None) -> ModuleType:
    """Import TensorFlow safely for use as a CPU-only data loader and return the module.

    ``num_threads`` bounds TensorFlow's intra- and inter-op pools (None keeps TensorFlow's default). Thread
    settings can only be applied before TensorFlow initialises its runtime; later calls leave them unchanged.
    """
    global _TF_CONFIGURED
    ensure_triton_loaded()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not _TF_CONFIGURED:
        try:
            tf.config.set_visible_devices([], "GPU")
            if num_threads is not None:
                tf.config.threading.set_intra_op_parallelism_threads(num_threads)
                tf.config.threading.set_inter_op_parallelism_threads(num_threads)
        except RuntimeError:
            # The runtime was initialised by someone else's code first; the settings can no longer change.
            pass
        _TF_CONFIGURED = True
    return tf
