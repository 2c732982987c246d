"""TensorFlow before triton segfaults with the CUDA torch build; importing our packages must make order irrelevant."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_python

HAS_TRITON = importlib.util.find_spec("triton") is not None

# Orders that put TensorFlow before a triton importer (torchvision, timm) or before our packages.
ORDERS = [
    ["prismatic", "tensorflow", "torchvision", "timm"],
    ["tensorflow", "prismatic", "torchvision", "timm", "transformers"],
    ["tensorflow", "craft", "prismatic", "timm", "torch"],
    ["transformers", "tensorflow", "prismatic.synthetic.rlds_writer", "timm"],
    ["torch", "tensorflow", "prismatic.models.tokenizer", "torchvision"],
    ["prismatic.util.import_safety", "tensorflow_datasets", "timm", "craft"],
]


def _import_script(modules: list[str]) -> str:
    lines = [f"import {m}" for m in modules]
    return "\n".join([*lines, "import torch; torch.zeros(1) + 1", "print('imported-ok')"])


@pytest.mark.multiprocess
def test_any_import_order_with_our_packages_survives() -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda order: (order, run_python(_import_script(order))), ORDERS))
    failures = [
        f"{' -> '.join(order)}: exit {proc.returncode}\n{proc.stderr[-800:]}"
        for order, proc in results
        if proc.returncode != 0 or "imported-ok" not in proc.stdout
    ]
    assert not failures, "\n\n".join(failures)


@pytest.mark.multiprocess
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU-only torch build): nothing to guard")
def test_unguarded_order_really_crashes() -> None:
    """Control: without our guard the order is fatal, so the test above exercises a real hazard."""
    proc = run_python("import tensorflow, triton")
    if proc.returncode == 0:
        pytest.skip("tensorflow-then-triton no longer crashes with these versions; the guard may be unnecessary")
    assert proc.returncode < 0 or proc.returncode == 139, proc.stderr[-500:]


def test_import_tensorflow_hides_gpus_and_loads_triton_first() -> None:
    proc = run_python(
        "import sys\n"
        "from prismatic.util.import_safety import import_tensorflow, triton_installed\n"
        "tf = import_tensorflow()\n"
        "assert tf.config.get_visible_devices('GPU') == []\n"
        "assert ('triton' in sys.modules) == triton_installed()\n"
        "print('ok')"
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-800:]
