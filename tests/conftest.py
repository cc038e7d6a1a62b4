import numpy as np
import pytest

from logitcore._backends import availability


def _numba_jit_disabled():
    try:
        import numba
    except ImportError:
        return False
    return bool(numba.config.DISABLE_JIT)


# NUMBA_DISABLE_JIT=1: numba runs the numba backend's kernels as plain Python, about 10^4
# times slower (CI runs `tests/test_kernels.py -k numba` this way, see README "Tests").
# Tests then use the smallest shapes that take the same code paths.
NUMBA_PYTHON_MODE = _numba_jit_disabled()

ALL_BACKENDS = ("numpy", "numba", "cython")
COMPILED_BACKENDS = ("numba", "cython")


def _skip_unavailable(name):
    available, reason = availability(name)
    if not available:
        pytest.skip(f"backend {name} unavailable: {reason}")
    return name


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Every backend, the reference included; unavailable ones skip with the reason."""
    return _skip_unavailable(request.param)


@pytest.fixture(params=COMPILED_BACKENDS)
def compiled_backend(request):
    return _skip_unavailable(request.param)


def tolerance(dtype):
    """rtol/atol a backend must meet against the float64 reference for this dtype."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-6, atol=2e-6)
    return dict(rtol=1e-13, atol=1e-13)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
