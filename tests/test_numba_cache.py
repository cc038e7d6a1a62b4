"""numba's on-disk cache and kernel_constants.py: a changed constant never runs stale
cached machine code (numba's cache only watches the file of the jitted function)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("numba")

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "src" / "logitcore"

SCRIPT = """
import numpy as np
from logitcore._backends import numba_kernels
out = np.empty(1)
numba_kernels.logsumexp(np.array([[0.0, 1.0]]), out, 1)
print(repr(float(out[0])))
"""


def run_in(tree):
    environment = dict(os.environ, PYTHONPATH=str(tree))
    environment.pop("NUMBA_CACHE_DIR", None)  # the cache beside the copied source
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=environment, cwd=tree,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no machine code")
def test_changed_constant_recompiles(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(SOURCE, tree / "logitcore",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    correct = run_in(tree)
    assert correct == pytest.approx(1.3132616875182228, rel=1e-15)
    assert run_in(tree) == correct  # from the cache

    # A wrong float64 exp polynomial (the r^2 coefficient 0.5 -> 0.25): exp(-1), and so
    # logsumexp([0, 1]) = 1 + log1p(exp(-1)), must change although numba_kernels.py did not.
    constants = tree / "logitcore" / "_backends" / "kernel_constants.py"
    text = constants.read_text()
    edited = text.replace("1.6666666666666666667e-01, 0.5)", "1.6666666666666666667e-01, 0.25)")
    assert edited != text
    constants.write_text(edited)
    changed = run_in(tree)
    assert changed != correct
    assert run_in(tree) == changed  # the new machine code is cached in turn
