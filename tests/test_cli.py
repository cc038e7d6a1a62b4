"""The command line, run as a user runs it: in a subprocess."""

import json
import subprocess
import sys

import pytest


def _logitcore(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "logitcore", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_info_lists_backends_and_simd():
    result = _logitcore("info")
    assert result.returncode == 0, result.stderr
    for expected in ("numpy", "numba", "cython", "cpu_simd", "n_threads"):
        assert expected in result.stdout


def test_bench_writes_table_and_json(tmp_path):
    path = tmp_path / "bench.json"
    result = _logitcore("bench", "--shape", "64x100", "--dtype", "float32", "--ops",
                        "logsumexp", "cross_entropy", "--repeat", "2", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert "| logsumexp | 64x100 | float32 | logitcore-numpy |" in result.stdout
    data = json.loads(path.read_text())
    assert data["meta"]["read_GBps"] > 0
    impls = {(row["op"], row["impl"]) for row in data["rows"]}
    assert ("cross_entropy", "logitcore-numpy") in impls
    for row in data["rows"]:
        assert row["ms"] > 0 and row["x_floor"] > 0
        if row["kind"] == "peer":
            assert row["x_fastest_peer"] <= 1.0


def test_bench_times_float16_input():
    result = _logitcore("bench", "--shape", "64x100", "--dtype", "float16", "--ops",
                        "logsumexp", "--repeat", "2", "--backends", "numpy")
    assert result.returncode == 0, result.stderr
    assert "| logsumexp | 64x100 | float16 | logitcore-numpy |" in result.stdout


def test_bench_rejects_bad_shape():
    result = _logitcore("bench", "--shape", "64by100")
    assert result.returncode == 2 and "shape must look like 65536x1000" in result.stderr
