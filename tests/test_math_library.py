"""The math library of the numba backend (exp, log, log1p) against mpmath, over a grid of
bit patterns: every exponent, both signs, a few mantissas each, and the specials (0, -0,
inf, -inf, NaN, subnormals). Errors are in units in the last place (ulp) of the
correctly rounded result, subnormal results included (exp keeps them, it does not flush).
"""

from __future__ import annotations

import numpy as np
import pytest

mpmath = pytest.importorskip("mpmath")
numba_kernels = pytest.importorskip("logitcore._backends.numba_kernels")

MANTISSAS = {np.float32: (0, 1, 0x2AAAAA, 0x400000, 0x5A3F12, 0x7FFFFF),
             np.float64: (0, 1, 0x5555555555555, 0x8000000000000, 0xB3C1A2F45D6E7,
                          0xFFFFFFFFFFFFF)}
LAYOUT = {np.float32: (np.uint32, 23, 8), np.float64: (np.uint64, 52, 11)}


def bit_pattern_grid(dtype):
    """Every finite exponent (subnormals: exponent field 0) with the mantissas above, both
    signs, then the specials."""
    bits_type, mantissa_bits, exponent_bits = LAYOUT[dtype]
    patterns = []
    for sign in (0, 1):
        for exponent in range((1 << exponent_bits) - 1):
            for mantissa in MANTISSAS[dtype]:
                patterns.append((sign << (mantissa_bits + exponent_bits))
                                | (exponent << mantissa_bits) | mantissa)
    grid = np.array(patterns, dtype=bits_type).view(dtype)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0], dtype=dtype)
    return np.concatenate([grid, specials])


def ulp_errors(got, x, dtype, function):
    """|got - function(x)| in ulps of the correctly rounded result, per element; the
    specials (reference not finite) must match exactly (error 0 or inf)."""
    mpmath.mp.prec = 200
    errors = np.zeros(x.shape[0])
    for j, (value, result) in enumerate(zip(x.tolist(), got.tolist())):
        exact = function(value)
        if exact is None:  # outside the function's domain
            continue
        if not isinstance(exact, mpmath.mpf) or not mpmath.isfinite(exact):
            expected = float(exact)
            same = (result == expected) or (np.isnan(result) and np.isnan(expected))
            errors[j] = 0.0 if same else np.inf
            continue
        with np.errstate(over="ignore"):  # 0 or inf at the ends of the range, by design
            rounded = dtype(float(exact))
        if not np.isfinite(rounded):
            errors[j] = 0.0 if result == rounded else np.inf
            continue
        spacing = float(np.spacing(np.abs(rounded)))
        errors[j] = float(abs(mpmath.mpf(result) - exact)) / spacing
    return errors


def exact_exp(value):
    if np.isnan(value):
        return mpmath.mpf("nan")
    if value > 1000 or value < -1000:  # far beyond both ends: inf or 0 after rounding
        return mpmath.mpf("inf") if value > 0 else mpmath.mpf(0)
    return mpmath.exp(mpmath.mpf(value))


def exact_log(value):
    if np.isnan(value) or value < 0:
        return mpmath.mpf("nan")
    if value == 0:
        return mpmath.mpf("-inf")
    return mpmath.log(mpmath.mpf(value))


def exact_log1p(value):
    if np.isnan(value):
        return mpmath.mpf("nan")
    if value < -1:
        return None  # the kernels never take log1p there
    if value == -1:
        return mpmath.mpf("-inf")
    return mpmath.log1p(mpmath.mpf(value))


# Bounds in ulp: about one ulp, as the library documents; log1p in float64 loses a little
# more just above -1 + 2^-53, where 1 + y cancels and the correction term carries y.
CASES = [
    ("math_exp", exact_exp, np.float32, 1.0),
    ("math_exp", exact_exp, np.float64, 1.0),
    ("math_log", exact_log, np.float32, 1.0),
    ("math_log", exact_log, np.float64, 1.0),
    ("math_log1p", exact_log1p, np.float32, 1.0),
    ("math_log1p", exact_log1p, np.float64, 2.0),
]


@pytest.mark.parametrize("name, exact, dtype, bound", CASES,
                         ids=[f"{name}-{dtype.__name__}" for name, _, dtype, _ in CASES])
def test_primitive_against_mpmath(name, exact, dtype, bound):
    x = bit_pattern_grid(dtype)
    out = np.empty_like(x)
    getattr(numba_kernels, name)(x, out)
    assert out.dtype == dtype
    errors = ulp_errors(out, x, dtype, exact)
    worst = int(np.argmax(errors))
    assert errors[worst] <= bound, (
        f"{name}({x[worst]!r}) = {out[worst]!r}: {errors[worst]:.3g} ulp from mpmath")


def test_exp_keeps_subnormal_results():
    """exp of -100 (float32) and -740 (float64) is subnormal: kept, not flushed to 0."""
    for dtype, value in ((np.float32, -100.0), (np.float64, -740.0)):
        x = np.array([value], dtype=dtype)
        out = np.empty_like(x)
        numba_kernels.math_exp(x, out)
        expected = dtype(float(mpmath.exp(value)))
        assert 0 < out[0] < np.finfo(dtype).tiny
        assert out[0] == expected


def test_specials():
    for dtype in (np.float32, np.float64):
        x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=dtype)
        out = np.empty_like(x)
        numba_kernels.math_exp(x, out)
        np.testing.assert_array_equal(out, [1.0, 1.0, np.inf, 0.0, np.nan])
        numba_kernels.math_log(x, out)
        np.testing.assert_array_equal(out, [-np.inf, -np.inf, np.inf, np.nan, np.nan])
        y = np.array([-1.0, 0.0, -0.0, np.inf, np.nan], dtype=dtype)
        numba_kernels.math_log1p(y, out)
        np.testing.assert_array_equal(out, [-np.inf, 0.0, 0.0, np.inf, np.nan])
