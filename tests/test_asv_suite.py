"""The asv suite (asv_bench/benchmarks) stays runnable: every benchmark's setup and
measured function run once on tiny data, so a broken benchmark fails here and not
hours into an `asv run`. The suite's own view of logitcore.bench is checked too.

No timing is asserted. The full smoke run through asv itself is tools/asv_smoke.sh.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

SUITE_DIR = Path(__file__).resolve().parents[1] / "asv_bench" / "benchmarks"
PACKAGE = "logitcore_asv_suite"  # imported under its own name: "benchmarks" is too common
PREFIXES = ("time_", "peakmem_", "track_", "timeraw_", "mem_")
MODULES = ("common", "ops", "ratios", "startup")


def _import_suite():
    """Import the suite with LOGITCORE_ASV_TINY=1 (its sizes are read at import)."""
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    previous = os.environ.get("LOGITCORE_ASV_TINY")
    os.environ["LOGITCORE_ASV_TINY"] = "1"
    try:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, SUITE_DIR / "__init__.py", submodule_search_locations=[str(SUITE_DIR)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
        return {name: importlib.import_module(f"{PACKAGE}.{name}") for name in MODULES}
    finally:
        if previous is None:
            del os.environ["LOGITCORE_ASV_TINY"]
        else:
            os.environ["LOGITCORE_ASV_TINY"] = previous


SUITE = _import_suite()


def _benchmark_cases():
    """A pytest parameter (module, class or None, method name, benchmark parameters)
    for every benchmark and parameter set, found the way asv finds them: public classes
    and functions of the suite's modules whose names start with a benchmark prefix."""
    cases = []
    for module_name in MODULES:
        module = SUITE[module_name]
        for attr_name, attr in sorted(vars(module).items()):
            if attr_name.startswith("_") or getattr(attr, "__module__", None) != module.__name__:
                continue
            if isinstance(attr, type):
                methods = [m for m in dir(attr) if m.startswith(PREFIXES)]
                grid = list(itertools.product(*attr.params)) if hasattr(attr, "params") else [()]
                for method in methods:
                    for params in grid:
                        label = f"{module_name}.{attr_name}.{method}({', '.join(params)})"
                        cases.append(pytest.param(module, attr, method, params, id=label))
            elif callable(attr) and attr_name.startswith(PREFIXES):
                cases.append(pytest.param(module, None, attr_name, (),
                                          id=f"{module_name}.{attr_name}"))
    return cases


CASES = _benchmark_cases()


def test_suite_has_every_public_op_and_helper_benchmarks():
    ops = SUITE["ops"]
    measured = {cls.op for cls in vars(ops).values()
                if isinstance(cls, type) and not cls.__name__.startswith("_")
                and hasattr(cls, "op")}
    assert measured == set(SUITE["common"].PEERS_BY_OP)
    names = " ".join(p.id for p in CASES)
    for required in ("time_op", "peakmem_op", "track_speedup_over_torch",
                     "track_first_call_cold_numba_cache", "track_first_call_warm_numba_cache",
                     "timeraw_import_logitcore"):
        assert required in names


def _skip_slow_first_calls(method, params):
    """Each first-call case starts one or two interpreters (and Numba compiles for
    seconds): here one op per backend and one Numba compile are enough to prove the
    benchmark works; tools/asv_smoke.sh runs every case."""
    if not method.startswith("track_first_call"):
        return
    backend, op = params
    if op != SUITE["startup"].FIRST_CALL_OPS[0] or (backend == "numba" and "warm" in method):
        pytest.skip("first-call latency: covered by one case per backend here")


@pytest.mark.parametrize("module, owner, method, params", CASES)
def test_benchmark_runs_once(module, owner, method, params):
    """setup (a NotImplementedError there is asv's "skipped"), the function, teardown
    (which asv calls whether or not setup skipped)."""
    if owner is None:  # a module-level benchmark function
        result = getattr(module, method)()
        if method.startswith("timeraw_"):  # asv runs the returned code in a new process
            exec(compile(result, method, "exec"), {})
        return
    _skip_slow_first_calls(method, params)
    instance = owner()
    try:
        instance.setup(*params)
    except NotImplementedError as exc:
        if hasattr(instance, "teardown"):  # as asv does, after a skip too
            instance.teardown(*params)
        pytest.skip(f"asv would skip it: {exc}")
    try:
        result = getattr(instance, method)(*params)
    finally:
        if hasattr(instance, "teardown"):
            instance.teardown(*params)
    if method.startswith("track_"):
        assert isinstance(result, float) and math.isfinite(result) and result > 0


def test_full_shapes_are_the_design_reference_shapes():
    from logitcore import bench

    assert SUITE["common"].FULL_SHAPES == [f"{r}x{c}" for r, c in bench.REFERENCE_SHAPES]


def test_suite_lists_every_peer_logitcore_bench_has():
    """A peer added to logitcore.bench.peer_runners must show up in the dashboard."""
    from logitcore import bench

    common = SUITE["common"]
    x, labels = bench._make_data((4, 5), np.float32)
    for op in bench.OPS:
        listed = set(common.PEERS_BY_OP[op])
        installed = set(bench.peer_runners(op, x, labels, 1))
        assert installed <= listed, (op, installed - listed)


def test_tiny_mode_has_no_full_size_parameters():
    common = SUITE["common"]
    assert common.SHAPES == common.TINY_SHAPES
    for shape in common.SHAPES:
        rows, classes = common.parse_shape(shape)
        assert rows * classes <= 1 << 16
