"""One math library, two spellings: the numba and cython backends' exp, log and log1p
against each other over a grid of bit patterns (every exponent, both signs, subnormals,
0, -0, inf, -inf, NaN).

Both implement the same algorithm with the coefficients of kernel_constants.py, so they
may differ only by the rounding of fused multiply-adds (gcc contracts a*b+c into one FMA
in its AVX2/AVX-512 clones, LLVM in numba where the CPU has FMA): the same specials,
zeros, infinities and NaNs in the same places, and at most one unit in the last place
apart elsewhere, subnormal results included. Each backend's own accuracy against mpmath
is tested in test_math_library.py and test_cython_math.py.
"""

import numpy as np
import pytest

from logitcore._backends import availability, load
from test_cython_math import bit_pattern_grid

FUNCTIONS = ["math_exp", "math_log", "math_log1p"]
DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def backends():
    loaded = []
    for name in ("numba", "cython"):
        available, reason = availability(name)
        if not available:
            pytest.skip(f"backend {name!r} is not available: {reason}")
        loaded.append(load(name))
    return loaded


def domain(function, x):
    """The arguments a kernel hands the primitive: log takes sums of exps (>= 0), log1p
    arguments in [-1, inf]; exp any value."""
    if function == "math_log":
        return x[~(x < 0)]
    if function == "math_log1p":
        return x[~(x < -1)]
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_backends_agree_within_one_ulp(backends, function, dtype):
    x = domain(function, bit_pattern_grid(dtype))
    results = []
    for backend in backends:
        out = np.empty_like(x)
        getattr(backend, function)(x, out)
        results.append(out)
    numba_result, cython_result = results
    np.testing.assert_array_equal(np.isnan(numba_result), np.isnan(cython_result))
    finite = np.isfinite(numba_result) & np.isfinite(cython_result)
    not_finite = ~finite & ~np.isnan(numba_result)
    np.testing.assert_array_equal(numba_result[not_finite], cython_result[not_finite])
    np.testing.assert_array_equal(numba_result[finite] == 0, cython_result[finite] == 0)
    spacing = np.spacing(np.maximum(np.abs(numba_result[finite]),
                                    np.abs(cython_result[finite])))
    gap = np.abs(numba_result[finite] - cython_result[finite]) / spacing
    assert gap.max(initial=0.0) <= 1.0, (
        f"{function} {np.dtype(dtype).name}: the backends differ by {gap.max()} ulp at "
        f"x = {x[finite][np.argmax(gap)]!r}")
