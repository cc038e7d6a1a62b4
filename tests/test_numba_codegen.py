"""What the numba backend's hot loops compile to, where the speed depends on it.

The values are checked against NumPy's own float16 conversion (independent of
logitcore); the machine code is checked for the instruction the speed relies on."""

import platform

import numpy as np
import pytest

from conftest import NUMBA_PYTHON_MODE

pytestmark = pytest.mark.skipif(NUMBA_PYTHON_MODE, reason="inspects compiled code")

numba_kernels = pytest.importorskip("logitcore._backends.numba_kernels")


def _widened_every_float16_pattern():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.size, np.float32)
    numba_kernels.widen_span(bits, out)
    return bits, out


def test_float16_widening_is_exact_for_every_bit_pattern():
    bits, got = _widened_every_float16_pattern()
    want = bits.view(np.float16).astype(np.float32)
    is_nan = np.isnan(want)
    np.testing.assert_array_equal(got[~is_nan].view(np.uint32), want[~is_nan].view(np.uint32))
    assert np.isnan(got[is_nan]).all()
    # the sign of a NaN is kept
    np.testing.assert_array_equal(np.signbit(got[is_nan]), np.signbit(want[is_nan]))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="x86 instruction names")
def test_float16_widening_uses_the_cpus_conversion_where_it_has_one():
    """With F16C, float16 is widened by vcvtph2ps (8 values an instruction), not by
    integer operations and a rebiasing multiplication (slow on float16 subnormals)."""
    if not numba_kernels.FLOAT16_IN_HARDWARE:
        pytest.skip("this CPU has no float16 conversion")
    _widened_every_float16_pattern()
    signature = next(s for s in numba_kernels.widen_span.signatures
                     if s[0].dtype.name == "uint16")
    assert "vcvtph2ps" in numba_kernels.widen_span.inspect_asm(signature)
