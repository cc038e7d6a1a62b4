"""The cython backend's math library (lc_math.h: exp, log, log1p), held to ulp bounds.

The kernels call these primitives on every element; the test hooks ``math_exp``,
``math_log`` and ``math_log1p`` of the compiled module run them (the same SIMD clone as the
kernels) elementwise. Inputs are a grid of bit patterns: every exponent of the type, both
signs, a few mantissas each (so subnormals too), and the specials. The reference is mpmath
at high precision, rounded to the type.
"""

import numpy as np
import pytest

from logitcore._backends import availability, load

mpmath = pytest.importorskip("mpmath")

# Worst error allowed, in units in the last place of the correctly rounded result. The
# measured worst cases are in lc_math.h's header comment.
ULP_BOUNDS = {
    ("exp", np.float32): 1.0,
    ("exp", np.float64): 1.0,
    ("log", np.float32): 0.51,  # computed in double, then rounded once
    ("log", np.float64): 1.0,
    ("log1p", np.float32): 0.51,
    ("log1p", np.float64): 1.5,  # tiny negative arguments: the rounding correction
}
SPECIALS = {
    "exp": [(0.0, 1.0), (-0.0, 1.0), (np.inf, np.inf), (-np.inf, 0.0), (np.nan, np.nan)],
    "log": [(0.0, -np.inf), (-0.0, -np.inf), (1.0, 0.0), (np.inf, np.inf), (-np.inf, np.nan),
            (-1.0, np.nan), (np.nan, np.nan)],
    "log1p": [(-1.0, -np.inf), (0.0, 0.0), (np.inf, np.inf), (-2.0, np.nan),
              (-np.inf, np.nan), (np.nan, np.nan)],
}
MP_FUNCTIONS = {"exp": mpmath.exp, "log": mpmath.log, "log1p": mpmath.log1p}


@pytest.fixture(scope="module")
def kernels():
    available, reason = availability("cython")
    if not available:
        pytest.skip(reason)
    return load("cython")


def bit_pattern_grid(dtype):
    """Every exponent field (subnormals and inf/NaN included), both signs, five mantissas."""
    bits = {np.float32: (np.uint32, 23, 8), np.float64: (np.uint64, 52, 11)}
    uint, mantissa_bits, exponent_bits = bits[dtype]
    top = (1 << mantissa_bits) - 1
    mantissas = [0, 1, 1 << (mantissa_bits - 1), top, 0x5A5A5A5A5A5A5A5A & top]
    patterns = [
        (sign << (mantissa_bits + exponent_bits)) | (exponent << mantissa_bits) | mantissa
        for sign in (0, 1)
        for exponent in range(1 << exponent_bits)
        for mantissa in mantissas
    ]
    return np.array(patterns, dtype=uint).view(dtype)


def ulp_errors(got, x, function, dtype):
    """|got - f(x)| in ulps of the correctly rounded f(x), for the finite, in-domain x.
    Also returns the correctly rounded results, to check the non-finite ones exactly."""
    rounded = np.empty_like(got)
    errors = np.zeros(got.shape)
    largest = np.finfo(dtype).max
    with mpmath.workprec(200), np.errstate(over="ignore", invalid="ignore"):
        # exact results from here on round to inf
        overflow = mpmath.mpf(float(largest)) + mpmath.mpf(float(np.spacing(largest))) / 2
        for i, value in enumerate(x.astype(np.float64)):
            if not np.isfinite(value) or (function == "log" and value <= 0) or (
                    function == "log1p" and value <= -1):
                rounded[i] = np.nan  # the specials are checked on their own
                continue
            exact = MP_FUNCTIONS[function](mpmath.mpf(float(value)))
            if exact >= overflow:
                rounded[i] = np.inf
                continue
            rounded[i] = dtype(float(exact))
            spacing = np.spacing(np.abs(rounded[i]))
            if not np.isfinite(got[i]):
                errors[i] = np.inf
            else:
                errors[i] = float(abs(mpmath.mpf(float(got[i])) - exact) / float(spacing))
    return errors, rounded


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("function", ["exp", "log", "log1p"])
def test_math_within_ulp_bound_on_bit_pattern_grid(kernels, function, dtype):
    x = bit_pattern_grid(dtype)
    got = np.full_like(x, 7.0)
    getattr(kernels, f"math_{function}")(x, got)
    errors, rounded = ulp_errors(got, x, function, dtype)
    overflow = np.isinf(rounded)
    np.testing.assert_array_equal(got[overflow], rounded[overflow])
    checked = np.isfinite(rounded)
    worst = int(np.argmax(np.where(checked, errors, 0)))
    bound = ULP_BOUNDS[(function, dtype)]
    assert errors[checked].max() <= bound, (
        f"{function}({x[worst]!r}) = {got[worst]!r}, correctly rounded {rounded[worst]!r}: "
        f"{errors[worst]:.3f} ulp > {bound}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("function", ["exp", "log", "log1p"])
def test_math_specials(kernels, function, dtype):
    x = np.array([value for value, _ in SPECIALS[function]], dtype=dtype)
    want = np.array([value for _, value in SPECIALS[function]], dtype=dtype)
    got = np.full_like(x, 7.0)
    getattr(kernels, f"math_{function}")(x, got)
    np.testing.assert_array_equal(got, want)


def test_exp_keeps_subnormal_results(kernels):
    """exp's two-factor 2^k scale keeps results below the smallest normal (numba flushed
    them to 0 before the math library was shared)."""
    for dtype in (np.float32, np.float64):
        tiny = np.finfo(dtype).tiny
        x = np.log(np.array([tiny / 4, tiny / 1000], dtype=np.float64)).astype(dtype)
        got = np.empty_like(x)
        kernels.math_exp(x, got)
        assert np.all(got > 0) and np.all(got < tiny), got


@pytest.mark.parametrize("function", ["exp", "log", "log1p"])
def test_math_hooks_check_their_operands(kernels, function):
    hook = getattr(kernels, f"math_{function}")
    with pytest.raises(ValueError, match="out"):
        hook(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="float32 or float64"):
        hook(np.zeros(3, np.int64), np.zeros(3, np.int64))
