import numpy as np
import pytest

from logitcore._backends import availability

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
