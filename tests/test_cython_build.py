"""How the compiled Cython backend was built (its values are tested in test_kernels.py).

A Cython ``prange`` compiled without OpenMP runs on one thread and every value test still
passes, so these tests look at the build itself: a normal build has OpenMP, it reports
which SIMD code path runs, and the ``LOGITCORE_DISABLE_OPENMP=1`` build (the fallback
when OpenMP cannot be linked) compiles, imports and computes the same values.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from logitcore._backends import availability, load

REPO_ROOT = Path(__file__).resolve().parents[1]


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(scope="module")
def kernels():
    available, reason = availability("cython")
    if not available:
        pytest.fail(f"the Cython extension is not built: {reason}")
    return load("cython")


def test_openmp_enabled_in_a_normal_build(kernels):
    if env_flag("LOGITCORE_DISABLE_OPENMP"):
        assert kernels.OPENMP_ENABLED is False
    else:
        assert kernels.OPENMP_ENABLED is True, (
            "the extension was compiled without OpenMP: its prange loops run on one thread"
        )


def test_simd_path_is_reported(kernels):
    assert isinstance(kernels.SIMD_PATH, str)
    assert kernels.SIMD_PATH.strip()


def test_supported_kernels_are_all_present(kernels):
    assert isinstance(kernels.SUPPORTED_KERNELS, frozenset)
    for name in kernels.SUPPORTED_KERNELS:
        assert callable(getattr(kernels, name)), name


# Runs in a fresh interpreter with the unpacked wheel first on sys.path, so that the
# package under test is the one just built, not the installed one. SciPy is the reference.
CHECK_NO_OPENMP_BUILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {unpacked!r})
    import numpy as np
    from scipy import special
    import logitcore
    from logitcore._backends import _cython_kernels as kernels
    assert logitcore.__file__.startswith({unpacked!r}), logitcore.__file__
    assert kernels.__file__.startswith({unpacked!r}), kernels.__file__
    assert kernels.OPENMP_ENABLED is False, kernels.OPENMP_ENABLED
    rng = np.random.default_rng(0)
    for dtype, rtol in ((np.float32, 2e-6), (np.float64, 1e-13)):
        for shape in ((513, 10), (33, 1000), (1, 70000)):
            x = (rng.standard_normal(shape) * 4).astype(dtype)
            x[0, 1] = -np.inf
            want = special.logsumexp(x.astype(np.float64), axis=1)
            got = np.empty(shape[0], dtype); kernels.logsumexp(x, got, 2)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
            want = special.softmax(x.astype(np.float64), axis=1)
            got = np.empty(shape, dtype); kernels.softmax(x, got, 2)
            np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-7 * rtol)
            assert got[0, 1] == 0.0
    print("no-OpenMP build OK:", kernels.SIMD_PATH)
    """
)


@pytest.mark.slow
def test_build_without_openmp(tmp_path):
    """LOGITCORE_DISABLE_OPENMP=1 builds a working, single-threaded extension.

    Built the way ``pip install .`` builds: pip's isolated PEP 517 build, which installs
    what pyproject.toml's [build-system] requires (not whatever setuptools this
    environment has), into a wheel that is then imported.
    """
    source_copy = tmp_path / "source"
    source_copy.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, source_copy / name)
    shutil.copytree(
        REPO_ROOT / "src",
        source_copy / "src",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__", "*.egg-info"),
    )
    wheel_dir = tmp_path / "wheels"
    env = dict(os.environ, LOGITCORE_DISABLE_OPENMP="1")
    env.pop("LOGITCORE_CYTHON_DEBUG", None)
    # -v: the compiler's command lines, checked for OpenMP flags below.
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-v", "--wheel-dir", str(wheel_dir), str(source_copy)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    log = build.stdout[-3000:] + build.stderr[-3000:]
    assert build.returncode == 0, log
    wheels = sorted(wheel_dir.glob("logitcore-*.whl"))
    assert len(wheels) == 1, log
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(unpacked)
    built = sorted((unpacked / "logitcore" / "_backends").glob("_cython_kernels*"))
    assert built, "the wheel has no compiled extension:\n" + log
    output = build.stdout + build.stderr
    assert "-O3" in output or "/O2" in output, "the compiler's command lines are not shown:\n" + log
    assert "-fopenmp" not in output, "OpenMP flags were used despite the switch"

    script = CHECK_NO_OPENMP_BUILD.format(unpacked=str(unpacked))
    check = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no-OpenMP build OK" in check.stdout
