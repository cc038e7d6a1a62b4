"""Numba backend: the kernel contract of ``logitcore._backends`` as @njit(parallel=True) kernels.

Where the speed comes from (docs/architecture.md, "Numerics and speed"):

* A branch-free exp written as plain arithmetic (range reduction, polynomial, 2^k built
  from its bit pattern), so that LLVM vectorises it. Numba >= 0.62 compiles ``np.exp`` in
  a loop as one scalar libm call per element, several times slower. The same for the log of
  each row's sum and the log1p of softplus.
* Few memory passes. A row is read from memory once, in blocks of ``BLOCK_CLASSES``
  classes: the block's maximum, then its sum of exp (the block is still in L1), and the
  per-block row states (max, sum exp) are merged like online softmax. The exp loops prefetch the data
  the next max pass will read, so memory and arithmetic overlap. Nothing N x C is
  allocated.
* float32 sums of exp accumulate in float32 over short chunks, then in float64.
* Work split to fit the shape, by four schedules written once each and generic over the
  op's row operation (see "Row operations and schedules"): ``rows`` (rows across
  threads), ``class_split`` (rows fewer than threads, e.g. one 128k-class row: the blocks
  of a row across threads, merged in block order so the result does not depend on the
  thread count), ``narrow`` (rows too short to vectorise, e.g. 4M x 10: row tiles
  transposed in L1 so every pass runs across rows) and ``flat`` (elementwise ops).

Fast-math: kernels and reductions use ``contract, reassoc, afn, arcp`` so reductions
vectorise; never ``nnan``/``ninf``, which would let LLVM break the -inf masks and NaN rows
of the edge table. The exp/log code and formulas whose evaluation order matters are
compiled with ``contract`` only: reassociation would undo the Cody-Waite split and the
rounding trick inside exp.

Threading layer, pool and fork handling: numba_threads.py. Pure-Python twins of the
intrinsics for NUMBA_DISABLE_JIT=1: numba_python_mode.py. Every jitted function stays in
this file: numba's cache only watches the file of the function it compiled, so jitted
code calling jitted code in another file would run stale machine code after an edit.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from types import FunctionType

import numba
import numpy as np
from llvmlite import ir
from numba import literally, njit, prange, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload
from numba.np import numpy_support
from numba.np.arrayobj import populate_array

from logitcore._backends import kernel_constants, op_table
from logitcore._backends.kernel_constants import (
    BLOCK_CLASSES,
    LABEL_CHUNK,
    NARROW_MAX_CLASSES,
    ROW_SUM_CHUNK_ELEMENTS,
    ROW_TILE_ELEMENTS,
)
from logitcore._backends.numba_threads import launch, threading_layer_name, usable_threads

# Every kernel of the op table.
SUPPORTED_KERNELS = op_table.ALL_KERNELS

# --------------------------------------------------------------------------------------
# Sizes (module-level Python numbers are frozen into the cached machine code)
# --------------------------------------------------------------------------------------
# The sizes and coefficients both compiled backends must agree on come from
# kernel_constants.py. numba's cache does not see edits of that file, so
# _forget_stale_cache (end of this module) drops this module's cached machine code when
# the constants differ from those it was compiled with.
CACHE_LINE = 64
# Terms summed in the input precision before the running sum moves to float64.
SUM_CHUNK = 256
# Split the class axis across threads while there are fewer than this many rows per thread.
SPLIT_ROWS_PER_THREAD = 2
# The rows and class-split schedules cut their work into at most this many contiguous
# ranges (spread over the threads by prange), each with its own buffer for widening half
# input: a buffer per range, not per row, and enough ranges to balance any thread count.
SCHEDULE_TASKS = 256

VECTOR_MATH = {"contract", "reassoc", "afn", "arcp"}
ORDERED_MATH = {"contract"}

# error_model="numpy": IEEE division (x / 0 = inf) instead of a ZeroDivisionError check,
# whose branch stops loops holding a division from vectorising.
vector_jit = njit(fastmath=VECTOR_MATH, error_model="numpy")
ordered_jit = njit(fastmath=ORDERED_MATH, error_model="numpy")
plain_jit = njit(error_model="numpy")
parallel_kernel = njit(parallel=True, cache=True, fastmath=VECTOR_MATH, error_model="numpy")
serial_kernel = njit(cache=True, fastmath=VECTOR_MATH, error_model="numpy")


@dataclass(frozen=True)
class ChunkKernels:
    serial: object
    parallel: object


def chunk_kernels(function):
    """``function``, a loop over chunks by prange, as a serial kernel (prange is range
    there) and as a parallel one: the serial kernel serves calls of one chunk or one
    thread without a parallel launch (~1 us). numba's cache keys machine code by the
    function's qualified name and bytecode, not by its flags, so the serial kernel is
    compiled from a copy named apart: else each would load the other's cached code."""
    serial = FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial",
                          function.__defaults__, function.__closure__)
    serial.__qualname__ = function.__qualname__ + "_serial"
    serial.__doc__ = function.__doc__
    return ChunkKernels(serial_kernel(serial), parallel_kernel(function))


def launch_chunks(threads, kernels, serial, *args):
    """Run ``kernels`` (chunk_kernels) on args: the serial kernel when ``serial`` (or with
    one thread), else the parallel one on ``threads`` threads."""
    if serial or threads == 1:
        return kernels.serial(*args)
    return launch(threads, kernels.parallel, *args)

# --------------------------------------------------------------------------------------
# LLVM intrinsics numba does not expose
# --------------------------------------------------------------------------------------


def _bitcast(value, casts):
    """The typing and codegen of an intrinsic that reinterprets ``value``, of a type in
    ``casts``, as the type it maps to (LLVM bitcast: same size, no conversion); None (no
    match) for other types."""
    result = casts.get(value)
    if result is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(result))

    return result(value), codegen


@intrinsic
def bits_to_float(typingctx, bits):
    """Reinterpret an int32 as float32 or an int64 as float64 (no conversion)."""
    return _bitcast(bits, {types.int32: types.float32, types.int64: types.float64})


@intrinsic
def float_to_bits(typingctx, value):
    """Reinterpret a float32 as int32 or a float64 as int64 (no conversion)."""
    return _bitcast(value, {types.float32: types.int32, types.float64: types.int64})


@intrinsic
def max_ignoring_nan(typingctx, a, b):
    """llvm.maxnum: the larger of a and b, the other one if either is NaN.

    Unlike ``a if a > b else b`` it vectorises as a reduction without ``nnan``. NaN rows
    are still detected: their NaN reaches the sum of exp.
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        llvm_type = context.get_value_type(a)
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(llvm_type, [llvm_type, llvm_type]),
            "llvm.maxnum." + ("f32" if a == types.float32 else "f64"),
        )
        return builder.call(function, args)

    return a(a, b), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Ask for the cache line holding array[index] (llvm.prefetch, read, keep in L1).

    No bounds check and no wraparound: prefetching past the end of the array is harmless
    (a prefetch never faults), which lets loops prefetch "further along in memory".
    """
    if not (isinstance(array, types.Array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array_struct = context.make_array(array)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, array, array_struct, [args[1]], wraparound=False
        )
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]),
            "llvm.prefetch.p0",
        )
        builder.call(function, [pointer, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


def cast_like(value, like):
    """``value`` converted to the float type of ``like`` (a scalar or an array)."""


@overload(cast_like)
def _cast_like(value, like):
    target = like.dtype if isinstance(like, types.Array) else like

    def impl(value, like):
        return target(value)

    return impl


# --------------------------------------------------------------------------------------
# The math library: exp, log, log1p (the cython backend's fast_math.h, same algorithms)
# --------------------------------------------------------------------------------------
# Written as plain branch-free arithmetic (range reduction, polynomial, 2^k built from its
# bit pattern) so that LLVM vectorises it: numba compiles np.exp in a loop as one scalar
# libm call per element. The algorithms and coefficients are kernel_constants.py's, shared
# with the C side (docs/architecture.md, "One math library"): exp is Cody-Waite range
# reduction, a polynomial and a two-factor 2^k scale, so results in the subnormal range are
# kept (not flushed to 0) and underflow / overflow come out of the arithmetic itself; log
# is fdlibm's log1p polynomial on the reduced mantissa.

LOG2E = kernel_constants.LOG2E
SQRT2 = kernel_constants.SQRT2
ROUND_MAGIC_F32 = kernel_constants.ROUND_MAGIC_F32
ROUND_MAGIC_F64 = kernel_constants.ROUND_MAGIC_F64
LN2_HI_F32 = kernel_constants.LN2_HI_F32
LN2_LO_F32 = kernel_constants.LN2_LO_F32
LN2_HI_F64 = kernel_constants.LN2_HI_F64
LN2_LO_F64 = kernel_constants.LN2_LO_F64
LN2_HI_LOG_F32 = kernel_constants.LN2_HI_LOG_F32
LN2_LO_LOG_F32 = kernel_constants.LN2_LO_LOG_F32
EXP_LOWEST_F32 = kernel_constants.EXP_LOWEST_F32
EXP_HIGHEST_F32 = kernel_constants.EXP_HIGHEST_F32
EXP_LOWEST_F64 = kernel_constants.EXP_LOWEST_F64
EXP_HIGHEST_F64 = kernel_constants.EXP_HIGHEST_F64
# The polynomials, highest degree first (tuples: numba freezes each as a constant).
EXP_POLY_F32 = kernel_constants.EXP_POLY_F32
EXP_POLY_F64 = kernel_constants.EXP_POLY_F64
LOG1P_POLY_F32 = kernel_constants.LOG1P_POLY_F32
LOG1P_POLY_F64 = kernel_constants.LOG1P_POLY_F64
SMALLEST_NORMAL_F64 = 2.2250738585072014e-308
TWO_TO_54 = 18014398509481984.0


@ordered_jit
def polynomial(x, coefficients):
    """The polynomial of ``coefficients`` (a constant tuple, highest degree first) at x, in
    x's type, by Horner's rule: p = c0, then p = p x + c for each next c, the order the
    C side writes out (so the same bits). The loop over the constant tuple is unrolled
    and its coefficients folded in by LLVM, as if written out by hand."""
    p = cast_like(coefficients[0], x)
    for c in coefficients[1:]:
        p = p * x + cast_like(c, x)
    return p


@ordered_jit
def expm1_reduced_float32(x):
    """(exp(r) - 1, k) with x = k ln2 + r, |r| <= ln2 / 2, for a clamped float32 x (Cody-Waite:
    k * LN2_HI is exact). exp(r) - 1 = r + r^2 P(r) is kept apart from the 1 so that
    exp_scaled_float32 can apply 2^k in one FMA."""
    rounded = x * np.float32(LOG2E) + np.float32(ROUND_MAGIC_F32)
    k = np.int32(float_to_bits(rounded) - float_to_bits(np.float32(ROUND_MAGIC_F32)))
    k_float = rounded - np.float32(ROUND_MAGIC_F32)
    r = x - k_float * np.float32(LN2_HI_F32)
    r = r - k_float * np.float32(LN2_LO_F32)
    p = polynomial(r, EXP_POLY_F32)
    return p * (r * r) + r, k


@ordered_jit
def exp_reduced_float32(x):
    """(exp(r), k) with x = k ln2 + r, |r| <= ln2 / 2, for a clamped float32 x."""
    expm1_r, k = expm1_reduced_float32(x)
    return expm1_r + np.float32(1.0), k


@ordered_jit
def exp_float32(x):
    """exp for float32, ~1 ulp, branch-free. exp(-inf) = 0, exp(inf) = inf, NaN -> NaN."""
    # Clamp so that k stays where the two-factor scale works; the clamped ends still round
    # to 0 and to inf. (bound > x ? bound : x) keeps a NaN x: both comparisons are false.
    x = np.float32(EXP_LOWEST_F32) if np.float32(EXP_LOWEST_F32) > x else x
    x = np.float32(EXP_HIGHEST_F32) if np.float32(EXP_HIGHEST_F32) < x else x
    exp_r, k = exp_reduced_float32(x)
    # 2^k as two normal powers of two (k in [-150, 128]): exp_r * scale_a is exact, so the
    # product rounds once, also where the result is subnormal. Any split of k gives the
    # same bits.
    k_half = np.int32(k >> 1)
    scale_a = bits_to_float(np.int32((k_half + 127) << 23))
    scale_b = bits_to_float(np.int32((k - k_half + 127) << 23))
    return exp_r * scale_a * scale_b


@ordered_jit
def expm1_reduced_float64(x):
    """(exp(r) - 1, k, k as a float) with x = k ln2 + r, |r| <= ln2 / 2, for a clamped x
    (expm1_reduced_float32 in float64)."""
    rounded = x * LOG2E + ROUND_MAGIC_F64
    k = float_to_bits(rounded) - float_to_bits(ROUND_MAGIC_F64)
    k_float = rounded - ROUND_MAGIC_F64
    r = x - k_float * LN2_HI_F64
    r = r - k_float * LN2_LO_F64
    p = polynomial(r, EXP_POLY_F64)
    return p * (r * r) + r, k, k_float


@ordered_jit
def exp_reduced_float64(x):
    """(exp(r), k, k as a float) with x = k ln2 + r, |r| <= ln2 / 2, for a clamped x."""
    expm1_r, k, k_float = expm1_reduced_float64(x)
    return expm1_r + 1.0, k, k_float


@ordered_jit
def exp_float64(x):
    """exp for float64, ~1 ulp, branch-free. exp(-inf) = 0, exp(inf) = inf, NaN -> NaN."""
    x = EXP_LOWEST_F64 if EXP_LOWEST_F64 > x else x
    x = EXP_HIGHEST_F64 if EXP_HIGHEST_F64 < x else x
    exp_r, k, k_float = exp_reduced_float64(x)
    # Halve k with the rounding trick too: AVX2 has no 64-bit arithmetic shift.
    k_half = float_to_bits(k_float * 0.5 + ROUND_MAGIC_F64) - float_to_bits(ROUND_MAGIC_F64)
    scale_a = bits_to_float((k_half + 1023) << 52)
    scale_b = bits_to_float((k - k_half + 1023) << 52)
    return exp_r * scale_a * scale_b


# Every exp in a kernel's hot loop is of a shifted argument, x - max <= 0 (and exp(-|x|) in
# sigmoid and softplus). For those 2^k needs no split in two halves: exp(r) * 2^(k + 64)
# is exact (k + 64 >= -1011, a normal power of two) and the product with the constant
# 2^-64 rounds once, to the same bits as exp_float32/64 give, subnormal results included,
# for two operations fewer per element than the halving. exp(r) * 2^(k + 64) is taken as
# one FMA, (exp(r) - 1) * s + s with s = 2^(k + 64): scaling by a power of two commutes
# with rounding while the result stays normal, so it rounds to exactly (1 + (exp(r) - 1))
# * s, one operation fewer. A positive argument only arises from a row whose shift is 0
# because its maximum is +inf; there the sum is +inf whatever the finite terms are, so
# any x > 0 gives +inf (shifted_exp). Where the shift is a finite maximum of the values,
# no argument is positive and that guard is left out (exp_nonpositive_*, two operations
# fewer again).
SHIFTED_SCALE_BIAS = 64


@ordered_jit
def exp_scaled_float32(x):
    """2^64 exp(x) for a float32 x in [EXP_LOWEST_F32, 0] (or NaN): a normal number."""
    expm1_r, k = expm1_reduced_float32(x)
    scale = bits_to_float(np.int32((k + (127 + SHIFTED_SCALE_BIAS)) << 23))
    return expm1_r * scale + scale


@ordered_jit
def exp_scaled_float64(x):
    """2^64 exp(x) for a float64 x in [EXP_LOWEST_F64, 0] (or NaN): a normal number."""
    expm1_r, k, _ = expm1_reduced_float64(x)
    scale = bits_to_float((k + (1023 + SHIFTED_SCALE_BIAS)) << 52)
    return expm1_r * scale + scale


@ordered_jit
def exp_nonpositive_float32(x):
    """exp(x) for float32 x <= 0 or NaN, the bits of exp_float32 (x > 0 not allowed)."""
    clamped = np.float32(EXP_LOWEST_F32) if np.float32(EXP_LOWEST_F32) > x else x
    return exp_scaled_float32(clamped) * np.float32(2.0 ** -SHIFTED_SCALE_BIAS)


@ordered_jit
def exp_nonpositive_float64(x):
    """exp(x) for float64 x <= 0 or NaN, the bits of exp_float64 (x > 0 not allowed)."""
    clamped = EXP_LOWEST_F64 if EXP_LOWEST_F64 > x else x
    return exp_scaled_float64(clamped) * 2.0 ** -SHIFTED_SCALE_BIAS


@ordered_jit
def log1p_reduced_float64(f, k_ln2_hi, k_ln2_lo):
    """k ln2 + log(1 + f) for 1 + f in [sqrt(1/2), sqrt(2)) (fdlibm): log(1 + f) =
    f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f)."""
    s = f / (2.0 + f)
    z = s * s
    p = polynomial(z, LOG1P_POLY_F64)
    half_f_squared = 0.5 * f * f
    return k_ln2_hi - ((half_f_squared - (s * (half_f_squared + p * z) + k_ln2_lo)) - f)


@ordered_jit
def log1p_reduced_float32(f, k_ln2_hi, k_ln2_lo):
    """log1p_reduced_float64 in float32, with the float32 polynomial."""
    s = f / (np.float32(2.0) + f)
    z = s * s
    p = polynomial(z, LOG1P_POLY_F32)
    half_f_squared = np.float32(0.5) * f * f
    return k_ln2_hi - ((half_f_squared - (s * (half_f_squared + p * z) + k_ln2_lo)) - f)


@ordered_jit
def log_float64(x):
    """log(x) for any float64, branch-free (the log of each row's sum of exps).

    x = 2^k m, m in [sqrt(1/2), sqrt(2)); log x = k ln2 + log1p(m - 1). log(0) = -inf,
    log(inf) = inf, negative or NaN -> NaN.
    """
    # A no-op when compiled; in Python mode a sum accumulated from 0.0 + float32 terms
    # arrives as float32 (NumPy 2 keeps it float32, numba widens to float64).
    x = np.float64(x)
    is_subnormal = x < SMALLEST_NORMAL_F64
    scaled = x * TWO_TO_54 if is_subnormal else x
    bits = float_to_bits(scaled)
    exponent = ((bits >> 52) & 0x7FF) - (1023 + 54 if is_subnormal else 1023)
    m = bits_to_float((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)  # [1, 2)
    is_high = m > SQRT2
    m = m * 0.5 if is_high else m
    exponent = exponent + 1 if is_high else exponent
    # The exponent as a float64 without an int64 -> float64 conversion (absent from AVX2).
    k = bits_to_float(float_to_bits(ROUND_MAGIC_F64) + exponent) - ROUND_MAGIC_F64
    result = log1p_reduced_float64(m - 1.0, k * LN2_HI_F64, k * LN2_LO_F64)
    result = x if x == np.inf else result
    result = -np.inf if x == 0.0 else result
    return result if x >= 0.0 else np.nan


@ordered_jit
def log1p_float64(y):
    """log(1 + y) for a float64 y >= -1 (or NaN): log of the rounded u = 1 + y plus the bits
    of y that rounding dropped, (y - (u - 1)) / u, so that log1p(tiny) == tiny. y = -1
    gives -inf and y = inf gives inf (no correction there: it would be 0/0 or inf - inf)."""
    y = np.float64(y)
    u = 1.0 + y
    correction = (y - (u - 1.0)) / u
    # `&`, not `and`: no branch, so that it vectorises over the rows of a row tile
    return log_float64(u) + (correction if (u > 0.0) & (u < np.inf) else 0.0)


@ordered_jit
def log1p_unit_float64(e):
    """log(1 + e) for e in [0, 1] (or NaN), branch-free: the softplus term
    log1p(exp(-|x|)). 1 + e lies in [1, 2], so at most one halving; `correction` restores
    the bits of e lost in rounding 1 + e, which keeps log1p(tiny) == tiny."""
    u = 1.0 + e
    correction = (e - (u - 1.0)) / u
    is_high = u > SQRT2
    m = 0.5 * u if is_high else u
    return log1p_reduced_float64(m - 1.0, LN2_HI_F64 if is_high else 0.0,
                                 (LN2_LO_F64 if is_high else 0.0) + correction)


@ordered_jit
def log1p_unit_float32(e):
    """log1p_unit_float64 in float32."""
    u = np.float32(1.0) + e
    correction = (e - (u - np.float32(1.0))) / u
    is_high = u > np.float32(SQRT2)
    m = np.float32(0.5) * u if is_high else u
    k_ln2_hi = np.float32(LN2_HI_LOG_F32) if is_high else np.float32(0.0)
    k_ln2_lo = np.float32(LN2_LO_LOG_F32) if is_high else np.float32(0.0)
    return log1p_reduced_float32(m - np.float32(1.0), k_ln2_hi, k_ln2_lo + correction)


def by_float_type(name, doc, float32_version, float64_version):
    """A function of one float that calls float32_version or float64_version by the float's
    type: chosen at compile time in jitted code (an overload, so the call compiles as a
    direct one), at call time in Python mode (NUMBA_DISABLE_JIT=1)."""

    def dispatch(x):
        if isinstance(x, np.float32):
            return float32_version(x)
        if isinstance(x, float):  # np.float64 and Python floats (numba's float64)
            return float64_version(np.float64(x))
        raise TypeError(f"{name}: float32 or float64 expected, got {type(x).__name__}")

    @overload(dispatch)
    def _dispatch(x):
        if x == types.float32:
            return lambda x: float32_version(x)
        if x == types.float64:
            return lambda x: float64_version(x)
        return None

    dispatch.__name__ = dispatch.__qualname__ = name
    dispatch.__doc__ = doc
    return dispatch


fast_exp = by_float_type(
    "fast_exp", "exp(x) in x's float type, vectorisable (see exp_float32 / exp_float64).",
    exp_float32, exp_float64)
nonpositive_exp = by_float_type(
    "nonpositive_exp", "exp(x) of an argument x <= 0 (or NaN) in x's float type: a value "
    "minus a finite maximum of the values it is taken from (exp_nonpositive_float32/64).",
    exp_nonpositive_float32, exp_nonpositive_float64)
log1p_unit = by_float_type(
    "log1p_unit", "log(1 + u) for u in [0, 1], in u's float type, vectorisable.",
    log1p_unit_float32, log1p_unit_float64)


@ordered_jit
def shifted_exp(x):
    """exp(x) of a shifted argument x <= 0 in x's float type (the bits of fast_exp); any
    x > 0 gives +inf (see above), NaN gives NaN."""
    zero = cast_like(0.0, x)
    clamped = zero if x > zero else x
    result = nonpositive_exp(clamped)
    return cast_like(np.inf, x) if x > zero else result


# Python mode (NUMBA_DISABLE_JIT=1): the intrinsics and overloads above have no Python
# body; numba_python_mode.py holds their pure-Python twins.
if numba.config.DISABLE_JIT:
    from logitcore._backends.numba_python_mode import (  # noqa: F811
        bits_to_float,
        cast_like,
        float_to_bits,
        ieee_quiet,
        max_ignoring_nan,
        prefetch,
    )

    parallel_kernel = serial_kernel = ieee_quiet


# --------------------------------------------------------------------------------------
# Elementwise formulas
# --------------------------------------------------------------------------------------


@ordered_jit
def sigmoid_value(x):
    # exp(-|x|) never overflows; 1/(1+e) on the right, e/(1+e) on the left keep precision.
    e = shifted_exp(-abs(x))
    inverse = cast_like(1.0, x) / (cast_like(1.0, x) + e)
    return inverse if x >= 0 else e * inverse


@ordered_jit
def softplus_of_negative(x):
    """softplus(-x) = log(1 + exp(-x)) = max(-x, 0) + log1p(exp(-|x|)), never overflows."""
    negative_part = -x if x < 0 else cast_like(0.0, x)
    return negative_part + log1p_unit(shifted_exp(-abs(x)))


@ordered_jit
def log_softmax_value(x, shift, log_sum):
    """(x - max) - log(sum exp), in this order (as the reference): x - max is exact near
    the max, so large logits do not cancel. All three in x's type."""
    return (x - shift) - log_sum


# --------------------------------------------------------------------------------------
# (max, sum exp) of a span of a row, and their merge
# --------------------------------------------------------------------------------------
# Helpers take 1-D views (row[start:stop]) and loop from 0: with a runtime start index,
# numba's negative-index wraparound makes LLVM load through gathers instead of vectors.
#
# A span's statistics are (m, others, n_at_max): m its maximum (NaN ignored), and with
# shift = shift_for(m) (m itself when finite, else 0, the reference's rule)
#   others   = the float64 sum of exp(x - shift) over the x that differ from shift,
#   n_at_max = how many x equal shift,
# so that sum exp(x - shift) = n_at_max + others and
#   lse = m + log1p(others + (n_at_max - 1)),
# which keeps every bit of the small terms when the maximum is unique (logsumexp([0, -40])
# is 4.25e-18; the plain sum 1 + 4.25e-18 rounds to 1 and its log to 0, SciPy gh-18295).
# Rows whose max is not finite come out as the edge table wants: +inf -> others = inf,
# lse = inf; all -inf -> others = 0, n_at_max = 0, lse = -inf + log1p(-1) = -inf; NaN ->
# others = NaN. Spans merge by merge_block_stats (see there).


@plain_jit
def shift_for(row_max):
    return row_max if np.isfinite(row_max) else cast_like(0.0, row_max)


@plain_jit
def softmax_is_defined(row_max, sum_exp):
    """False for the NaN rows of the edge table (NaN, +inf, all -inf). `&`, not `and`:
    no branch, so that loops across the rows of a row tile vectorise."""
    return np.isfinite(row_max) & np.isfinite(sum_exp)


@vector_jit
def max_of(values):
    row_max = cast_like(-np.inf, values)
    for j in range(values.shape[0]):
        row_max = max_ignoring_nan(row_max, values[j])
    return row_max


# Sums of exp are accumulated in the input precision over chunks of SUM_CHUNK elements and
# the chunk totals in float64: converting every float32 exp to float64 before adding
# costs as much as the exp itself. A chunk's 256 positive terms are spread over 8-32
# vector lanes, so its float32 sum is off by at most (256 / lanes + log2(lanes)) ulps,
# <= 2.1e-6 relative, ~1e-7 in practice (the float32 target is 2e-6 (1 + |value|)).


@plain_jit
def prefetch_ahead(values, start):
    """Prefetch the SUM_CHUNK elements lying BLOCK_CLASSES elements past values[start].

    Rows are contiguous, so that memory is the next block or the next rows: the data the
    next (memory-bound) max pass will read. Issued from the compute-bound exp loops, it
    keeps memory busy while the cores compute instead of leaving them waiting later.
    """
    for k in range(start + BLOCK_CLASSES, start + BLOCK_CLASSES + SUM_CHUNK, CACHE_LINE // values.itemsize):
        prefetch(values, k)


@vector_jit
def sum_exp_of(values, shift, out=None):
    """(others, n_at_max) of values for ``shift``; with an ``out`` (block_max_store_exp),
    each exp(values[j] - shift) is stored in out[j] too. exp(0) is exactly 1, so a term at
    the shift is taken out of others by subtracting the comparison as 1.0: a compare, a
    subtract and an add per element, all vectorised. ``out is None`` is decided at compile
    time (numba prunes the branch by the argument's type): without an out the loop has no
    store at all."""
    others = np.float64(0.0)  # float64 in Python mode too (float32 + 0.0 stays float32)
    n_at_max = np.float64(0.0)
    zero = cast_like(0.0, values)
    for start in range(0, values.shape[0], SUM_CHUNK):
        prefetch_ahead(values, start)
        chunk = values[start : start + SUM_CHUNK]
        out_chunk = chunk if out is None else out[start : start + SUM_CHUNK]
        partial = zero
        count = zero
        for j in range(chunk.shape[0]):
            at_max = cast_like(chunk[j] == shift, values)
            e = shifted_exp(chunk[j] - shift)
            if out is not None:
                out_chunk[j] = e
            partial += e - at_max
            count += at_max
        others += partial
        n_at_max += count
    return others, n_at_max


@vector_jit
def sum_exp_below_counting_in(values, row_max, count_zero):
    """sum_exp_of(values, row_max) for a finite row_max that no value exceeds, its count of
    terms at the max kept in count_zero's type. No argument of exp is positive, so the
    exp needs no guard for one (nonpositive_exp), and a term at the max is left out by a
    select (the same sum as subtracting exp(0) = 1)."""
    others = np.float64(0.0)
    n_at_max = np.float64(0.0)
    zero = cast_like(0.0, values)
    for start in range(0, values.shape[0], SUM_CHUNK):
        prefetch_ahead(values, start)
        chunk = values[start : start + SUM_CHUNK]
        partial = zero
        count = count_zero
        for j in range(chunk.shape[0]):
            at_max = chunk[j] == row_max
            e = nonpositive_exp(chunk[j] - row_max)
            partial += zero if at_max else e
            count += cast_like(at_max, count_zero)
        others += partial
        n_at_max += np.float64(count)
    return others, n_at_max


@vector_jit
def sum_exp_below(values, row_max):
    """(others, n_at_max) of values for a finite row_max that no value exceeds (the max of
    the values, or of the row holding them): sum_exp_of(values, row_max), fewer operations
    per element. The count runs in float32 lanes for float32 and in int64 lanes for float64,
    the faster of the two for each (a float64 count competes with the exp for the FMA
    ports; int32 lanes beside float32 ones stop LLVM from interleaving the loop)."""
    if values.itemsize == 4:
        return sum_exp_below_counting_in(values, row_max, np.float32(0.0))
    return sum_exp_below_counting_in(values, row_max, np.int64(0))


@vector_jit
def scale_in_place(values, factor):
    for j in range(values.shape[0]):
        values[j] *= factor


@plain_jit
def fill(values, value):
    for j in range(values.shape[0]):
        values[j] = value


@plain_jit
def relative_scale(part_max, row_max):
    """exp(part_max - row_max), re-expressing a part's sums (shift shift_for(part_max))
    relative to the row's max (raw maxima: a part that is all -inf has sums 0 and factor
    0; when row_max is +inf, every part with a smaller max gets 0)."""
    return shifted_exp(np.float64(part_max) - np.float64(row_max))


@vector_jit
def block_max_sum_exp(values):
    """(max, others, n_at_max) of one block: the max pass reads memory, the sum pass L1."""
    block_max = max_of(values)
    if np.isfinite(block_max):
        others, n_at_max = sum_exp_below(values, block_max)
    else:  # NaN-free +inf, or all -inf / NaN: shift 0, arguments may be positive
        others, n_at_max = sum_exp_of(values, shift_for(block_max))
    return block_max, others, n_at_max


@vector_jit
def block_max_store_exp(values, out):
    """(max, others, n_at_max) of one block, leaving exp(x - shift) of the block in out."""
    block_max = max_of(values)
    others, n_at_max = sum_exp_of(values, shift_for(block_max), out)
    return block_max, others, n_at_max


@plain_jit
def n_blocks_of(n_classes):
    return (n_classes + BLOCK_CLASSES - 1) // BLOCK_CLASSES


@plain_jit
def block_bounds(n_classes, block):
    start = block * BLOCK_CLASSES
    return start, min(start + BLOCK_CLASSES, n_classes)


@plain_jit
def block_state_buffers(n_blocks, row):
    """A long row's per-block (max, others, n_at_max) arrays, the max in the row's type."""
    return (np.empty(n_blocks, dtype=row.dtype), np.empty(n_blocks, dtype=np.float64),
            np.empty(n_blocks, dtype=np.float64))


@vector_jit
def row_max_sum_exp(row):
    """(max, others, n_at_max) of a whole row, from its blocks' merged by merge_block_stats.

    The class-split kernels merge the same blocks the same way, so a row's result does
    not depend on the number of threads.
    """
    n_classes = row.shape[0]
    if n_classes <= BLOCK_CLASSES:
        return block_max_sum_exp(row)  # the value merge_block_stats gives for one block
    n_blocks = n_blocks_of(n_classes)
    block_maxes, block_others, block_counts = block_state_buffers(n_blocks, row)
    for block in range(n_blocks):
        start, stop = block_bounds(n_classes, block)
        block_maxes[block], block_others[block], block_counts[block] = block_max_sum_exp(
            row[start:stop])
    return merge_block_stats(block_maxes, block_others, block_counts)


@vector_jit
def merge_block_stats(block_maxes, block_others, block_counts):
    """A row's (max, others, n_at_max) from its blocks': the row max first, then each block
    added in block order: a block whose max is the row's adds both fields, a block with a
    smaller max adds (n_at_max + others) exp(block max - row max) to others. Both loops
    vectorise (merging the blocks one by one, online-softmax style, would be a chain of
    scalar exps, in every long row and in the serial step of the class split)."""
    row_max = max_of(block_maxes)
    others = 0.0
    n_at_max = 0.0
    for block in range(block_maxes.shape[0]):
        at_max = block_maxes[block] == row_max
        block_total = block_others[block] + block_counts[block]
        rescaled = block_total * relative_scale(block_maxes[block], row_max)
        others += block_others[block] if at_max else rescaled
        n_at_max += block_counts[block] if at_max else 0.0
    return row_max, others, n_at_max


@plain_jit
def log_sum_exp_of(row_max, others, n_at_max):
    """max + log1p(others + n_at_max - 1): right at the edges too (see above)."""
    return np.float64(row_max) + log1p_float64(others + (n_at_max - 1.0))


@plain_jit
def task_range(n_items, n_tasks, task):
    """The task-th of n_tasks near-equal contiguous ranges of range(n_items)."""
    return task * n_items // n_tasks, (task + 1) * n_items // n_tasks


@plain_jit
def split_state_buffers(x):
    """Per-(row, block) (max, others, n_at_max) arrays for the class split."""
    n_rows = x.shape[0]
    n_blocks = n_blocks_of(x.shape[1])
    block_maxes = np.empty((n_rows, n_blocks), dtype=compute_dtype(x))
    block_others = np.empty((n_rows, n_blocks), dtype=np.float64)
    block_counts = np.empty((n_rows, n_blocks), dtype=np.float64)
    return block_maxes, block_others, block_counts


@vector_jit
def block_stats_block(x, args, i, block, start, stop):
    block_maxes, block_others, block_counts = args
    block_maxes[i, block], block_others[i, block], block_counts[i, block] = (
        block_max_sum_exp(x[i, start:stop]))


@vector_jit
def split_block_stats(x, row_scale):
    """Per-(row, block) (max, sum exp), the blocks of all rows spread over the threads
    (of the rows times their row_scale; None: none)."""
    states = split_state_buffers(x)
    scaled_class_split_schedule("block_stats", x, states, row_scale)
    return states


@vector_jit
def split_row_stats(x, row_scale):
    """(row maxima, others, n_at_max) with the blocks spread over the threads; identical
    to row_max_sum_exp row by row (of the rows times their row_scale; None: none)."""
    block_maxes, block_others, block_counts = split_block_stats(x, row_scale)
    n_rows = x.shape[0]
    row_maxes = np.empty(n_rows, dtype=compute_dtype(x))
    others = np.empty(n_rows, dtype=np.float64)
    counts = np.empty(n_rows, dtype=np.float64)
    for i in range(n_rows):
        row_maxes[i], others[i], counts[i] = merge_block_stats(
            block_maxes[i], block_others[i], block_counts[i])
    return row_maxes, others, counts


# --------------------------------------------------------------------------------------
# Narrow rows: a block of rows, transposed
# --------------------------------------------------------------------------------------
# With 10 classes a row's inner loop never reaches the vector body, and a loop across rows
# reads with a stride. So a block of rows is copied transposed into L1 scratch, classes x
# rows; there every pass (max, exp, sum, log) runs along the rows with unit stride.


@plain_jit
def narrow_rows_per_tile(n_classes):
    return max(1, ROW_TILE_ELEMENTS // n_classes)


@plain_jit
def narrow_scratch(x):
    """Per-task buffers for one block of rows: row maxima, float64 others and n_at_max,
    and the transposed block with room for one more row of rows_per_block values (the
    sums narrow_tile_stats accumulates in the input precision)."""
    rows_per_block = narrow_rows_per_tile(x.shape[1])
    row_max = np.empty(rows_per_block, dtype=x.dtype)
    others = np.empty(rows_per_block, dtype=np.float64)
    counts = np.empty(rows_per_block, dtype=x.dtype)  # < 64: exact, and no conversion
    transposed = np.empty(rows_per_block * (x.shape[1] + 1), dtype=x.dtype)
    return row_max, others, counts, transposed


@vector_jit
def transpose_tile(block, exps):
    """exps[c, r] = block[r, c], column by column: strided loads (gathers) and unit-stride
    stores, faster than the other order (a scatter of each row)."""
    n_rows, n_classes = block.shape
    for c in range(n_classes):
        column = exps[c]
        for r in range(n_rows):
            column[r] = block[r, c]


@vector_jit
def narrow_tile_stats(block, row_max, others, counts, transposed):
    """For the rows of ``block`` (a 2-D view) fill row_max[r], others[r] and counts[r]
    (n_at_max), and return exps[c, r] = exp(block[r, c] - shift_for(row_max[r])), a
    (classes, rows) view of ``transposed`` (from narrow_scratch: with less room than it
    gives, the sums go to a buffer allocated per call)."""
    n_rows, n_classes = block.shape
    exps = transposed[: n_classes * n_rows].reshape((n_classes, n_rows))
    transpose_tile(block, exps)
    block_max = row_max[:n_rows]
    block_others = others[:n_rows]
    block_counts = counts[:n_rows]
    fill(block_max, cast_like(-np.inf, block))
    all_finite = True
    for c in range(n_classes):
        column = exps[c]
        for r in range(n_rows):
            block_max[r] = max_ignoring_nan(block_max[r], column[r])
    for r in range(n_rows):
        all_finite &= np.isfinite(block_max[r])
    zero = cast_like(0.0, block)
    fill(block_counts, zero)
    if not all_finite:  # a row of +inf, -inf or NaN: shift 0, arguments may be positive
        fill(block_others, 0.0)
        for c in range(n_classes):
            column = exps[c]
            for r in range(n_rows):
                shift = shift_for(block_max[r])
                at_max = cast_like(column[r] == shift, column)
                e = shifted_exp(column[r] - shift)
                column[r] = e
                block_others[r] += np.float64(e - at_max)  # 0 at the max (see sum_exp_of)
                block_counts[r] += at_max
        return exps
    # Every shift is the row's finite max (sum_exp_below): no argument of exp is positive,
    # and the sums run in the input precision (at most NARROW_MAX_CLASSES terms a row),
    # widened once per row.
    if transposed.shape[0] >= (n_classes + 1) * n_rows:
        sums = transposed[n_classes * n_rows : (n_classes + 1) * n_rows]
    else:
        sums = np.empty(n_rows, dtype=block.dtype)
    fill(sums, zero)
    for c in range(n_classes):
        column = exps[c]
        for r in range(n_rows):
            at_max = column[r] == block_max[r]
            e = nonpositive_exp(column[r] - block_max[r])
            column[r] = e
            sums[r] += zero if at_max else e
            block_counts[r] += cast_like(at_max, block)
    for r in range(n_rows):
        block_others[r] = np.float64(sums[r])
    return exps


# --------------------------------------------------------------------------------------
# Half-precision input: read as 16 bits, widened to float32 where a schedule loads it
# --------------------------------------------------------------------------------------
# numba has no float16 type on the CPU, so a float16 or bfloat16 operand reaches the
# kernels as its bits (``half_bits``): uint16 for float16, int16 for bfloat16 (the two
# formats are told apart by the type, at compile time). Each schedule widens what it
# is about to hand a step -- one row (rows), one block (class split), one row tile
# (narrow), one span (flat) -- into a per-task float32 buffer, and gives the step a
# ``window``: a float32 (n_rows, C) array whose element [i, start] is the buffer's first.
# The step indexes it exactly as it would index x, so no row operation is written twice,
# and every op computes on half input as on float32 input holding the same values (the
# dtype policy: half in, float32 out, docs/architecture.md). The widening is exact
# (float32 holds every float16 and bfloat16 value, subnormals, infinities and NaN
# payloads included; FLOAT16_IN_HARDWARE below) and cheap next to the memory it saves:
# the buffer stays in L1/L2.
# A per-row factor applied while widening (a temperature, x * (1/T)) would go in
# widen_span, the only place every schedule reads half input through.

FLOAT16_BITS = types.uint16
BFLOAT16_BITS = types.int16
# float16 exponent and mantissa bits moved to a float32's place are the value times
# 2^-112 (subnormals included), so one multiplication rebias them exactly.
FLOAT16_REBIAS = 2.0 ** 112
# |x| >= 2^16 after rebiasing: the float16 exponent was all ones (inf or NaN).
FLOAT16_INF_NAN_THRESHOLD = 65536.0
FLOAT32_EXPONENT_MASK = 0x7F800000


def _host_has_float16_conversion():
    """Whether LLVM converts float16 to float32 in hardware on this CPU (x86 F16C; every
    aarch64 CPU has the conversion)."""
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return bool(features.get("f16c")) or bool(features.get("fp-armv8"))


def _is_half_bits(numba_type):
    return isinstance(numba_type, types.Array) and numba_type.dtype in (FLOAT16_BITS,
                                                                        BFLOAT16_BITS)


def half_bits(array):
    """The array a numba kernel receives: a float16 / bfloat16 array as its bits (uint16 /
    int16 view, no copy), any other array as it is. bfloat16 (ml_dtypes) is recognised by
    its name, so ml_dtypes is not imported."""
    dtype = array.dtype
    if dtype.itemsize != 2:
        return array
    if dtype.kind == "f":
        return array.view(np.uint16)
    if dtype.name == "bfloat16":
        return array.view(np.int16)
    return array


@ordered_jit
def float16_bits_to_float32(bits):
    """The float32 of float16 bits (uint16), exact: normal and subnormal values by one
    rebiasing multiplication, inf and NaN (payload kept) by setting the exponent."""
    h = np.int32(bits)
    magnitude = bits_to_float(np.int32((h & np.int32(0x7FFF)) << np.int32(13)))
    value = magnitude * np.float32(FLOAT16_REBIAS)
    value_bits = float_to_bits(value)
    if value >= np.float32(FLOAT16_INF_NAN_THRESHOLD):
        value_bits = value_bits | np.int32(FLOAT32_EXPONENT_MASK)
    return bits_to_float(np.int32(value_bits | ((h & np.int32(0x8000)) << np.int32(16))))


# Where the CPU converts float16 in hardware (x86 F16C, ARM's fcvt), LLVM's fpext of a
# half compiles to one conversion per 8 lanes (vcvtph2ps), where float16_bits_to_float32
# takes about eight operations, and a float16 subnormal there is a float32 subnormal
# operand of the rebiasing multiplication, which x86 CPUs process in a slow microcode
# assist. The values are the same (fpext is exact); a signalling NaN comes out quiet, as
# from NumPy's astype. Without hardware support fpext would become a call into a runtime
# library numba does not link, so those CPUs keep the integer version.
FLOAT16_IN_HARDWARE = _host_has_float16_conversion()


@intrinsic
def float16_bits_fpext(typingctx, bits):
    """The float32 of float16 bits (uint16) by LLVM's fpext (see FLOAT16_IN_HARDWARE)."""
    if bits != FLOAT16_BITS:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@ordered_jit
def bfloat16_bits_to_float32(bits):
    """The float32 of bfloat16 bits (int16): the upper half of a float32, exactly."""
    return bits_to_float(np.int32(np.int32(bits) << np.int32(16)))


def widen(bits):
    """The float32 value of one float16 (uint16) or bfloat16 (int16) bit pattern."""


@overload(widen)
def _widen(bits):
    if bits == FLOAT16_BITS and FLOAT16_IN_HARDWARE:
        return lambda bits: float16_bits_fpext(bits)
    if bits == FLOAT16_BITS:
        return lambda bits: float16_bits_to_float32(bits)
    if bits == BFLOAT16_BITS:
        return lambda bits: bfloat16_bits_to_float32(bits)
    return None


@vector_jit
def widen_span(bits, out):
    """out[j] = the float32 of bits[j]: the one place half input is read (1-D spans).

    It prefetches the input BLOCK_CLASSES elements ahead (prefetch_ahead): the steps then
    compute on the widened copy, and their own prefetches run ahead in that copy, not in
    memory, so without these the next rows would be read only once asked for."""
    for start in range(0, bits.shape[0], SUM_CHUNK):
        prefetch_ahead(bits, start)
        chunk = bits[start : start + SUM_CHUNK]
        out_chunk = out[start : start + SUM_CHUNK]
        for j in range(chunk.shape[0]):
            out_chunk[j] = widen(chunk[j])


@intrinsic
def window(typingctx, buffer, n_rows, n_classes, row, column):
    """A C-contiguous (n_rows, n_classes) array whose element [row, column] is buffer[0]
    (and [row, column + k] is buffer[k], [row + r, column] is buffer[r * n_classes]).

    The steps index it as they index x; only the elements copied into the buffer may be
    read (the others lie outside it). It shares the buffer's memory and keeps it alive.
    """
    if not (isinstance(buffer, types.Array) and buffer.ndim == 1 and buffer.layout == "C"):
        return None
    result = types.Array(buffer.dtype, 2, "C")

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        rows, classes, first_row, first_column = (
            context.cast(builder, value, value_type, types.intp)
            for value, value_type in zip(args[1:], signature.args[1:]))
        offset = builder.add(builder.mul(first_row, classes), first_column)
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(buffer.dtype)))
        array = context.make_array(result)(context, builder)
        populate_array(array, data=builder.gep(source.data, [builder.neg(offset)]),
                       shape=cgutils.pack_array(builder, [rows, classes]),
                       strides=cgutils.pack_array(builder, [builder.mul(classes, itemsize),
                                                            itemsize]),
                       itemsize=itemsize, meminfo=source.meminfo)
        return impl_ret_borrowed(context, builder, result, array._getvalue())

    return result(buffer, n_rows, n_classes, row, column), codegen


def reads_half(x, args):
    """Whether x or an operand in args is half input (a compile-time constant)."""


@overload(reads_half)
def _reads_half(x, args):
    answer = _is_half_bits(x) or any(_is_half_bits(t) for t in args.types)
    return lambda x, args: answer


def compute_dtype(x):
    """The dtype x's values are computed in: float32 for half input, else x's own."""


@overload(compute_dtype)
def _compute_dtype(x):
    dtype = np.float32 if _is_half_bits(x) else numpy_support.as_dtype(x.dtype).type
    return lambda x: dtype


@plain_jit
def half_buffer(x, n_elements):
    """A task's float32 buffer for n_elements widened values of x (none for float x)."""
    return np.empty(n_elements if reads_half(x, ()) else 0, dtype=np.float32)


def load_rows(x, buffer, first, stop):
    """x itself for float input; for half input, the rows first:stop widened into buffer
    and a window on it (the step reads those rows of it as it would read x's)."""


@overload(load_rows)
def _load_rows(x, buffer, first, stop):
    if not _is_half_bits(x):
        return lambda x, buffer, first, stop: x

    def impl(x, buffer, first, stop):
        n_classes = x.shape[1]
        # x is C-contiguous, so rows first:stop are one span: widened in one vector loop,
        # not row by row (a narrow tile's rows are too short for a vector loop each).
        widen_span(x.reshape(-1)[first * n_classes : stop * n_classes],
                   buffer[: (stop - first) * n_classes])
        return window(buffer, x.shape[0], n_classes, first, 0)

    return impl


def load_block(x, buffer, i, start, stop):
    """load_rows for the classes start:stop of row i."""


@overload(load_block)
def _load_block(x, buffer, i, start, stop):
    if not _is_half_bits(x):
        return lambda x, buffer, i, start, stop: x

    def impl(x, buffer, i, start, stop):
        widen_span(x[i, start:stop], buffer[: stop - start])
        return window(buffer, x.shape[0], x.shape[1], i, start)

    return impl


def load_span(x, buffer, start, stop):
    """A 1-D x whose elements start:stop read as float at their own indices: x itself, or
    for half input those elements widened into buffer and a window on it."""


@overload(load_span)
def _load_span(x, buffer, start, stop):
    if not _is_half_bits(x):
        return lambda x, buffer, start, stop: x

    def impl(x, buffer, start, stop):
        widen_span(x[start:stop], buffer[: stop - start])
        return window(buffer, 1, x.shape[0], 0, start)[0]

    return impl


def value_at(x, i, j):
    """x[i, j] as a float (widened for half input): for glue reading single elements."""


@overload(value_at)
def _value_at(x, i, j):
    if _is_half_bits(x):
        return lambda x, i, j: widen(x[i, j])
    return lambda x, i, j: x[i, j]


def n_half_operands(args):
    """How many operands of args are half input (a compile-time constant)."""


@overload(n_half_operands)
def _n_half_operands(args):
    count = sum(_is_half_bits(t) for t in args.types)
    return lambda args: count


def load_row_operands(args, buffers, i):
    """args with each half operand (an (n, C) array of bits) replaced by row i widened
    into its row of buffers (n_half_operands(args) rows of C floats) and a window on it."""


@overload(load_row_operands)
def _load_row_operands(args, buffers, i):
    half = [k for k, t in enumerate(args.types) if _is_half_bits(t)]
    if not half:
        return lambda args, buffers, i: args
    items = [f"load_rows(args[{k}], buffers[{half.index(k)}], i, i + 1)" if k in half
             else f"args[{k}]" for k in range(len(args.types))]
    source = f"def impl(args, buffers, i):\n    return ({', '.join(items)},)\n"
    namespace = {"load_rows": load_rows}
    exec(source, namespace)  # a tuple expression of the operands' count, written out
    return namespace["impl"]


# --------------------------------------------------------------------------------------
# temperature=: each row times a factor, at the same load points
# --------------------------------------------------------------------------------------
# A kernel's row_scale (op_table: None, (1,) for every row, or (n,) one per row) makes the
# op compute on x[i] * row_scale[i] (1/T). The schedules load what they hand a step through
# load_scaled_rows / load_scaled_block: without a scale (row_scale is None, a compile-time
# type) these ARE load_rows / load_block, the untempered machine code; with one, the row,
# block or row tile is copied (half input: widened) and multiplied into the task's buffer
# in one pass while it is in L1, and the step reads a window on it, so no row operation is
# written twice. A scaled value is rounded once, in the compute dtype: x * float(s).


def _no_scale(row_scale_type):
    return isinstance(row_scale_type, (types.NoneType, types.Omitted))


def row_factor(row_scale, i):
    """The factor of row i: row_scale[i], row_scale[0] for a (1,) scale, 1.0 for None."""


@overload(row_factor)
def _row_factor(row_scale, i):
    if _no_scale(row_scale):
        return lambda row_scale, i: 1.0
    return lambda row_scale, i: row_scale[i if row_scale.shape[0] > 1 else 0]


@ordered_jit
def row_grad_scale(grad_scale, row_scale, i):
    """A loss gradient's scale for row i: grad_scale times the row's factor (the chain rule
    back to the unscaled logits). Ordered: under reassociation the product would be
    regrouped with the coefficients it multiplies differently in each caller, and the rows
    and class-split schedules would give a row different bits."""
    return grad_scale * row_factor(row_scale, i)


def as_float(value):
    """value as its float: widened for half bits, itself otherwise."""


@overload(as_float)
def _as_float(value):
    if value in (FLOAT16_BITS, BFLOAT16_BITS):
        return lambda value: widen(value)
    return lambda value: value


@vector_jit
def scale_span(values, out, factor):
    """out[j] = values[j] (widened if half) * factor, rounded once in out's dtype."""
    f = cast_like(factor, out)
    for start in range(0, values.shape[0], SUM_CHUNK):
        prefetch_ahead(values, start)
        chunk = values[start : start + SUM_CHUNK]
        out_chunk = out[start : start + SUM_CHUNK]
        for j in range(chunk.shape[0]):
            out_chunk[j] = as_float(chunk[j]) * f


def scaled_buffer(x, n_elements, row_scale):
    """A task's buffer for n_elements loaded values of x: half_buffer's without a scale,
    else n_elements of x's compute dtype."""


@overload(scaled_buffer)
def _scaled_buffer(x, n_elements, row_scale):
    if _no_scale(row_scale):
        return lambda x, n_elements, row_scale: half_buffer(x, n_elements)
    return lambda x, n_elements, row_scale: np.empty(n_elements, dtype=compute_dtype(x))


def load_scaled_rows(x, buffer, first, stop, row_scale):
    """load_rows, each row times its factor when there is a row_scale."""


@overload(load_scaled_rows)
def _load_scaled_rows(x, buffer, first, stop, row_scale):
    if _no_scale(row_scale):
        return lambda x, buffer, first, stop, row_scale: load_rows(x, buffer, first, stop)

    def impl(x, buffer, first, stop, row_scale):
        n_classes = x.shape[1]
        for r in range(stop - first):
            scale_span(x[first + r], buffer[r * n_classes : (r + 1) * n_classes],
                       row_factor(row_scale, first + r))
        return window(buffer, x.shape[0], n_classes, first, 0)

    return impl


def load_scaled_block(x, buffer, i, start, stop, row_scale):
    """load_block, times row i's factor when there is a row_scale."""


@overload(load_scaled_block)
def _load_scaled_block(x, buffer, i, start, stop, row_scale):
    if _no_scale(row_scale):
        return lambda x, buffer, i, start, stop, row_scale: load_block(x, buffer, i, start, stop)

    def impl(x, buffer, i, start, stop, row_scale):
        scale_span(x[i, start:stop], buffer[: stop - start], row_factor(row_scale, i))
        return window(buffer, x.shape[0], x.shape[1], i, start)

    return impl


def scaled_value_at(x, i, j, row_scale):
    """value_at, times row i's factor as load_scaled_rows gives it (the same bits)."""


@overload(scaled_value_at)
def _scaled_value_at(x, i, j, row_scale):
    if _no_scale(row_scale):
        return lambda x, i, j, row_scale: value_at(x, i, j)

    def impl(x, i, j, row_scale):
        value = value_at(x, i, j)
        return value * cast_like(row_factor(row_scale, i), value)

    return impl


if numba.config.DISABLE_JIT:  # the twins of the intrinsic and overloads above
    from logitcore._backends.numba_python_mode import (  # noqa: F811
        compute_dtype,
        load_block,
        load_row_operands,
        load_rows,
        load_span,
        n_half_operands,
        reads_half,
        value_at,
        widen,
        window,
        row_factor,
        as_float,
        scaled_buffer,
        load_scaled_rows,
        load_scaled_block,
        scaled_value_at,
    )


# --------------------------------------------------------------------------------------
# Row operations and schedules
# --------------------------------------------------------------------------------------
# What an op computes on its rows (its row operation) and how the rows are spread over
# the threads (the schedule) are written apart (docs/architecture.md, "Schedules"):
#
# * a row operation is a name in ROW_OPERATIONS mapping each schedule's step to a small
#   jitted function: "row" (one whole row i), "block" (one block of row i, class split),
#   "tile" (one tile of narrow rows, given their row states), "flat" (a span of elements),
#   and optionally "prepare" (the steps' operands from the call's, e.g. a weight sum);
# * a schedule is ONE parallel loop, generic over the row operation: rows_schedule,
#   class_split_schedule, narrow_schedule, flat_schedule. It receives the operation's
#   name as a string literal and its operands as one tuple ``args``.
#
# The step is chosen at compile time (the name is a literal; row_step & co. are overloads
# that look the function up), so each op's kernel is compiled as if written out by hand,
# and the kernels stay cacheable: numba cannot cache code that receives jitted functions
# as values (they are "dynamic globals" to it), but it caches this. Python enters an op's
# schedules through its entry kernels (entry_kernels), cached per op.

ROW_OPERATIONS: dict[str, dict] = {}


def row_operation(name, **steps):
    """Register the steps (schedule step name -> jitted function) of a row operation."""
    ROW_OPERATIONS.setdefault(name, {}).update(steps)


def _row_operation_step(step, default=None):
    """A jitted function ``step(op, *args)`` calling operation ``op``'s ``step`` function
    (``default`` where the operation has none) with ``args``; ``op`` must be a string
    literal (the schedules and entry kernels ask for one)."""

    def call_step(op, *args):
        raise NotImplementedError(f"{step}: only callable from jitted code")

    @overload(call_step)
    def _call_step(op, *args):
        if not isinstance(op, types.StringLiteral):
            return None
        function = ROW_OPERATIONS[op.literal_value].get(step, default)
        return lambda op, *args: function(*args)

    return call_step


@plain_jit
def unchanged(args):
    return args


if numba.config.DISABLE_JIT:
    from logitcore._backends.numba_python_mode import row_operation_step as _row_operation_step  # noqa: F811,E501

row_step = _row_operation_step("row")
block_step = _row_operation_step("block")
tile_step = _row_operation_step("tile")
flat_step = _row_operation_step("flat")
# "prepare": the operands the steps receive, from the call's (default: the same).
prepare_step = _row_operation_step("prepare", unchanged)

# Schedules are compiled into the cached entry kernel that calls them, not cached apart.
schedule = njit(parallel=True, fastmath=VECTOR_MATH, error_model="numpy")


@schedule
def rows_schedule(op, x, args, row_scale):
    """Whole rows in parallel, one contiguous range of rows per thread:
    row_step(op, x, args, i) for every row i. Half input is widened row by row (x and
    any half operand of args) into the thread's buffers before the row's step; with a
    row_scale (temperature=, None: none) x's row is scaled into its buffer too."""
    literally(op)
    n_rows, n_classes = x.shape
    n_tasks = min(n_rows, SCHEDULE_TASKS)
    for task in prange(n_tasks):
        first, stop = task_range(n_rows, n_tasks, task)
        row_buffer = scaled_buffer(x, n_classes, row_scale)
        operand_buffers = np.empty((n_half_operands(args), n_classes), dtype=np.float32)
        for i in range(first, stop):
            row_step(op, load_scaled_rows(x, row_buffer, i, i + 1, row_scale),
                     load_row_operands(args, operand_buffers, i), i)


@plain_jit  # the parallel loop is the callee's
def class_split_schedule(op, x, args):
    """scaled_class_split_schedule without a row_scale."""
    literally(op)
    scaled_class_split_schedule(op, x, args, None)


@schedule
def scaled_class_split_schedule(op, x, args, row_scale):
    """Few long rows: the (row, block) pairs are the tasks, one contiguous range of them
    per thread. block_step(op, x, args, i, block, start, stop) for the classes start:stop
    of row i (half input widened, and with a row_scale scaled, into the thread's buffer
    first). Whatever the block step leaves per block is merged by the caller in block
    order, so results do not depend on the thread count."""
    literally(op)
    n_rows, n_classes = x.shape
    n_blocks = n_blocks_of(n_classes)
    n_tasks = n_rows * n_blocks
    n_parts = min(n_tasks, SCHEDULE_TASKS)
    for part in prange(n_parts):
        first, end = task_range(n_tasks, n_parts, part)
        block_buffer = scaled_buffer(x, BLOCK_CLASSES, row_scale)
        for task in range(first, end):
            i, block = task // n_blocks, task % n_blocks
            start, stop = block_bounds(n_classes, block)
            block_step(op, load_scaled_block(x, block_buffer, i, start, stop, row_scale),
                       args, i, block, start, stop)


@schedule
def narrow_schedule(op, x, args, n_tasks, row_scale):
    """Short rows: n_tasks contiguous ranges of rows in parallel, each cut into row tiles.
    For each tile narrow_tile_stats gives the row states (row_max, others, counts) and the
    transposed exps; tile_step(op, x, args, start, stop, exps, row_max, others, counts,
    row_scratch) then writes the tile's rows start:stop (row_scratch: two float64 values
    per row of the tile, free for the step's per-row factors). With a row_scale each tile
    is scaled into the task's buffer as half input is widened."""
    literally(op)
    n_rows, n_classes = x.shape
    rows_per_tile = narrow_rows_per_tile(n_classes)
    for task in prange(n_tasks):
        first, stop = task_range(n_rows, n_tasks, task)
        # Half input: each tile is widened into tile_buffer, the step reads a window on it.
        tile_buffer = scaled_buffer(x, rows_per_tile * n_classes, row_scale)
        row_max, others, counts, transposed = narrow_scratch(
            load_scaled_rows(x, tile_buffer, 0, 0, row_scale))
        row_scratch = np.empty((2, rows_per_tile))
        for tile_start in range(first, stop, rows_per_tile):
            tile_stop = min(tile_start + rows_per_tile, stop)
            tile = load_scaled_rows(x, tile_buffer, tile_start, tile_stop, row_scale)
            exps = narrow_tile_stats(tile[tile_start:tile_stop], row_max, others, counts,
                                     transposed)
            tile_step(op, tile, args, tile_start, tile_stop, exps, row_max, others, counts,
                      row_scratch)


@schedule
def flat_schedule(op, x, args, n_tasks):
    """Elementwise: n_tasks contiguous spans, flat_step(op, x, args, start, stop) for the
    elements start:stop (the step slices x and its outputs itself, as many as it has); half
    input is widened BLOCK_CLASSES elements at a time, so its spans are that long."""
    literally(op)
    span = x.shape[0] if not reads_half(x, ()) else BLOCK_CLASSES
    for task in prange(n_tasks):
        first, stop = task_range(x.shape[0], n_tasks, task)
        span_buffer = half_buffer(x, BLOCK_CLASSES)
        for start in range(first, stop, max(span, 1)):
            end = min(start + span, stop)
            flat_step(op, load_span(x, span_buffer, start, end), args, start, end)


@dataclass(frozen=True)
class EntryKernels:
    rows: object
    narrow: object
    flat: object
    scaled_rows: object
    scaled_narrow: object


def entry_kernels(op):
    """The cached kernels through which Python runs row operation ``op`` on a schedule:
    rows(x, *args), narrow(x, n_tasks, *args), flat(x, n_tasks, *args), and with a
    row_scale (temperature=) scaled_rows(x, row_scale, *args), scaled_narrow(x, n_tasks,
    row_scale, *args). Each is compiled on first use; ``op`` is a constant of each, so
    every op has machine code of its own (numba's cache tells them apart by that
    constant)."""

    @serial_kernel
    def rows(x, *args):
        rows_schedule(op, x, prepare_step(op, args), None)

    @serial_kernel
    def narrow(x, n_tasks, *args):
        narrow_schedule(op, x, prepare_step(op, args), n_tasks, None)

    @serial_kernel
    def flat(x, n_tasks, *args):
        flat_schedule(op, x, prepare_step(op, args), n_tasks)

    @serial_kernel
    def scaled_rows(x, row_scale, *args):
        rows_schedule(op, x, prepare_step(op, args), row_scale)

    @serial_kernel
    def scaled_narrow(x, n_tasks, row_scale, *args):
        narrow_schedule(op, x, prepare_step(op, args), n_tasks, row_scale)

    return EntryKernels(rows, narrow, flat, scaled_rows, scaled_narrow)


def _splits_classes(n_rows, n_classes, threads):
    """Few rows, long rows: spread each row's blocks over the threads."""
    return threads > 1 and n_classes > BLOCK_CLASSES and n_rows < SPLIT_ROWS_PER_THREAD * threads


def _is_narrow(n_classes):
    return 0 < n_classes < NARROW_MAX_CLASSES


def _launch_by_shape(threads, kernels, split, x, *args, row_scale=None,
                     split_takes_scale=True):
    """Run the schedule for x's shape: few long rows split the class axis (``split``, the
    op's own kernel: how blocks merge is the op's), short rows take the narrow schedule,
    others the rows schedule. With a ``row_scale`` (temperature=) the scaled entry
    kernels run, and ``split`` gets it after the op's arguments (unless
    ``split_takes_scale`` is False: args already hold it)."""
    n_rows, n_classes = x.shape
    if row_scale is not None:
        if _splits_classes(n_rows, n_classes, threads):
            launch(threads, split, x, *args, *((row_scale,) if split_takes_scale else ()))
        elif _is_narrow(n_classes):
            launch(threads, kernels.scaled_narrow, x, threads, row_scale, *args)
        else:
            _launch_rows(threads, kernels, x, *args, row_scale=row_scale)
    elif _splits_classes(n_rows, n_classes, threads):
        launch(threads, split, x, *args)
    elif _is_narrow(n_classes):
        launch(threads, kernels.narrow, x, threads, *args)
    else:
        _launch_rows(threads, kernels, x, *args)


def _launch_rows(threads, kernels, x, *args, row_scale=None):
    """Run the rows schedule of ``kernels`` (an op's entry kernels) on x: the scaled entry
    kernel with a ``row_scale`` (temperature=), the plain one without."""
    if row_scale is None:
        launch(threads, kernels.rows, x, *args)
    else:
        launch(threads, kernels.scaled_rows, x, row_scale, *args)


def _row_scale_or_none(row_scale):
    """A kernel's row_scale as the jitted code takes it: None, or a float64 array."""
    if row_scale is None or row_scale.size == 0:
        return None
    return np.ascontiguousarray(row_scale, dtype=np.float64)


# --------------------------------------------------------------------------------------
# logsumexp
# --------------------------------------------------------------------------------------


@vector_jit
def logsumexp_row(x, args, i):
    (out,) = args
    row_max, others, n_at_max = row_max_sum_exp(x[i])
    out[i] = log_sum_exp_of(row_max, others, n_at_max)


@vector_jit
def logsumexp_tile(x, args, start, stop, exps, row_max, others, counts, row_scratch):
    (out,) = args
    out_tile = out[start:stop]
    for r in range(stop - start):
        out_tile[r] = log_sum_exp_of(row_max[r], others[r], counts[r])


row_operation("logsumexp", row=logsumexp_row, tile=logsumexp_tile)
row_operation("block_stats", block=block_stats_block)


LOGSUMEXP = entry_kernels("logsumexp")


@serial_kernel
def _logsumexp_split(x, out, row_scale=None):
    # The parallel work is in split_block_stats; merging a few rows is serial.
    row_maxes, others, counts = split_row_stats(x, row_scale)
    for i in range(x.shape[0]):
        out[i] = log_sum_exp_of(row_maxes[i], others[i], counts[i])


def logsumexp(x, out, n_threads=1, row_scale=None):
    if x.shape[0] == 0:
        return
    _launch_by_shape(usable_threads(n_threads), LOGSUMEXP, _logsumexp_split, half_bits(x), out,
                     row_scale=_row_scale_or_none(row_scale))


# --------------------------------------------------------------------------------------
# logsumexp with scale factors b
# --------------------------------------------------------------------------------------


# logsumexp(x, b=b) leaves the terms with b == 0 out entirely, as scipy does: they neither
# set the shift (x = [1000, 0], b = [0, 1] gives 0, not -inf) nor add 0 * inf = NaN.


@vector_jit
def max_where_nonzero(values, b):
    row_max = cast_like(-np.inf, values)
    for j in range(values.shape[0]):
        value = values[j] if b[j] != 0 else cast_like(-np.inf, values)
        row_max = max_ignoring_nan(row_max, value)
    return row_max


@vector_jit
def sum_scaled_exp(values, b, shift):
    total = 0.0
    for j in range(values.shape[0]):
        term = np.float64(b[j]) * np.float64(fast_exp(values[j] - shift))
        total += term if b[j] != 0 else 0.0
    return total


@plain_jit
def sign_of(value):
    if value > 0.0:
        return 1.0
    if value < 0.0:
        return -1.0
    return value  # 0 or NaN


@vector_jit
def logsumexp_scaled_row(x, args, i):
    b, out, sign_out = args
    shift = shift_for(max_where_nonzero(x[i], b[i]))
    total = sum_scaled_exp(x[i], b[i], shift)
    out[i] = log_float64(abs(total)) + np.float64(shift)
    sign_out[i] = sign_of(total)


row_operation("logsumexp_scaled", row=logsumexp_scaled_row)


LOGSUMEXP_SCALED = entry_kernels("logsumexp_scaled")


def logsumexp_scaled(x, b, out, sign_out, n_threads=1):
    if x.shape[0] == 0:
        return
    launch(usable_threads(n_threads), LOGSUMEXP_SCALED.rows, half_bits(x), half_bits(b), out,
           sign_out)


# --------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------


# H = log S - T / S per row, with the row state's shift (the max), S = sum e = n_at_max +
# others and T = sum (x - shift) e, e = exp(x - shift); log S = log1p(others + n_at_max - 1)
# keeps the small terms as logsumexp does. A masked class (x = -inf, e = 0) adds 0 to T,
# not (-inf) * 0 = NaN. Rows whose max is not finite have no softmax: NaN.
# Schedules: rows and narrow. The class split would need T merged over blocks (rescaled by
# exp(block max - row max) plus a (block max - row max) S_block term): glue of its own, so
# long rows go through the rows schedule whatever the thread count.


@plain_jit
def entropy_of(row_max, others, n_at_max, weighted):
    if not np.isfinite(row_max):
        return np.nan
    total = others + n_at_max
    return log1p_float64(total - 1.0) - weighted / total


@vector_jit
def sum_shifted_times_exp(values, shift):
    """sum (x - shift) exp(x - shift) in float64, 0 for the terms whose exp is 0."""
    total = 0.0
    for j in range(values.shape[0]):
        e = shifted_exp(values[j] - shift)
        term = (np.float64(values[j]) - np.float64(shift)) * np.float64(e)
        total += term if e != 0 else 0.0
    return total


@vector_jit
def entropy_row(x, args, i):
    (out,) = args
    row_max, others, n_at_max = row_max_sum_exp(x[i])
    weighted = sum_shifted_times_exp(x[i], shift_for(row_max))
    out[i] = entropy_of(row_max, others, n_at_max, weighted)


@vector_jit
def entropy_tile(x, args, start, stop, exps, row_max, others, counts, row_scratch):
    (out,) = args
    for r in range(stop - start):
        shift = shift_for(row_max[r])
        weighted = 0.0
        for c in range(exps.shape[0]):
            e = exps[c, r]
            term = (np.float64(x[start + r, c]) - np.float64(shift)) * np.float64(e)
            weighted += term if e != 0 else 0.0
        out[start + r] = entropy_of(row_max[r], others[r], np.float64(counts[r]), weighted)


row_operation("entropy", row=entropy_row, tile=entropy_tile)


ENTROPY = entry_kernels("entropy")


def entropy(x, out, n_threads=1):
    if x.shape[0] == 0:
        return
    threads = usable_threads(n_threads)
    x = half_bits(x)
    if _is_narrow(x.shape[1]):
        launch(threads, ENTROPY.narrow, x, threads, out)
    else:
        launch(threads, ENTROPY.rows, x, out)


# --------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------


@vector_jit
def finish_softmax_block(out, block_max, row_max, sum_exp):
    """Turn a block's stored exp(x - shift_for(block_max)) into probabilities (sum_exp:
    the row's others + n_at_max)."""
    if not softmax_is_defined(row_max, sum_exp):
        fill(out, cast_like(np.nan, out))
        return
    factor = relative_scale(block_max, row_max) / sum_exp
    scale_in_place(out, cast_like(factor, out))


@vector_jit
def row_softmax(row, out):
    n_classes = row.shape[0]
    n_blocks = n_blocks_of(n_classes)
    if n_blocks == 1:
        block_max, others, n_at_max = block_max_store_exp(row, out)
        finish_softmax_block(out, block_max, block_max, others + n_at_max)
        return
    # Long row: each block is exponentiated while in L1, with its own shift; the second
    # pass rescales each block by exp(block max - row max) / sum.
    block_maxes, block_others, block_counts = block_state_buffers(n_blocks, row)
    for block in range(n_blocks):
        start, stop = block_bounds(n_classes, block)
        block_maxes[block], block_others[block], block_counts[block] = block_max_store_exp(
            row[start:stop], out[start:stop])
    row_max, others, n_at_max = merge_block_stats(block_maxes, block_others, block_counts)
    for block in range(n_blocks):
        start, stop = block_bounds(n_classes, block)
        finish_softmax_block(out[start:stop], block_maxes[block], row_max, others + n_at_max)


@vector_jit
def softmax_row(x, args, i):
    (out,) = args
    row_softmax(x[i], out[i])


@vector_jit
def softmax_tile(x, args, start, stop, exps, row_max, others, counts, row_scratch):
    (out,) = args
    n_classes = x.shape[1]
    # Per-row factors first, in their own (vectorised) loop.
    factors = row_scratch[0]
    for r in range(stop - start):
        sum_exp = others[r] + counts[r]
        defined = softmax_is_defined(row_max[r], sum_exp)
        factors[r] = 1.0 / sum_exp if defined else np.nan
    out_tile = out[start:stop]
    for r in range(stop - start):
        factor = cast_like(factors[r], x)
        for c in range(n_classes):
            out_tile[r, c] = exps[c, r] * factor


@vector_jit
def softmax_exp_block(x, args, i, block, start, stop):
    """Class split, first pass: a block's exps into out, and its state."""
    out, block_maxes, block_others, block_counts = args
    block_maxes[i, block], block_others[i, block], block_counts[i, block] = (
        block_max_store_exp(x[i, start:stop], out[i, start:stop]))


@vector_jit
def softmax_scale_block(x, args, i, block, start, stop):
    """Class split, second pass: a block's exps into probabilities, given the row's state."""
    out, block_maxes, row_maxes, sums = args
    finish_softmax_block(out[i, start:stop], block_maxes[i, block], row_maxes[i], sums[i])


row_operation("softmax", row=softmax_row, tile=softmax_tile)
row_operation("softmax_exp", block=softmax_exp_block)
row_operation("softmax_scale", block=softmax_scale_block)


SOFTMAX = entry_kernels("softmax")


@serial_kernel
def _softmax_split(x, out, row_scale=None):
    block_maxes, block_others, block_counts = split_state_buffers(x)
    scaled_class_split_schedule("softmax_exp", x,
                                (out, block_maxes, block_others, block_counts), row_scale)
    n_rows = x.shape[0]
    row_maxes = np.empty(n_rows, dtype=compute_dtype(x))
    sums = np.empty(n_rows, dtype=np.float64)
    for i in range(n_rows):
        row_maxes[i], others, n_at_max = merge_block_stats(
            block_maxes[i], block_others[i], block_counts[i])
        sums[i] = others + n_at_max
    class_split_schedule("softmax_scale", x, (out, block_maxes, row_maxes, sums))


def softmax(x, out, n_threads=1, row_scale=None):
    n_rows, n_classes = x.shape
    if n_rows == 0 or n_classes == 0:
        return
    _launch_by_shape(usable_threads(n_threads), SOFTMAX, _softmax_split, half_bits(x), out,
                     row_scale=_row_scale_or_none(row_scale))


# --------------------------------------------------------------------------------------
# log_softmax
# --------------------------------------------------------------------------------------


@plain_jit
def log_sum_or_nan(row_max, others, n_at_max):
    """log(sum exp(x - max)) = log1p(others + n_at_max - 1), NaN where softmax is undefined
    (every log-probability is NaN there). Branch-free: it vectorises over the rows of a
    narrow block."""
    defined = softmax_is_defined(row_max, others)
    log_sum = log1p_float64(others + (n_at_max - 1.0))  # taken in any case: no branch
    return log_sum if defined else np.nan


@vector_jit
def store_log_softmax(values, out, row_max, log_sum):
    """out = (x - max) - log_sum, log_sum from log_sum_or_nan (NaN: a NaN row)."""
    if np.isnan(log_sum):
        fill(out, cast_like(np.nan, out))
        return
    log_sum_typed = cast_like(log_sum, values)
    for j in range(values.shape[0]):
        out[j] = log_softmax_value(values[j], row_max, log_sum_typed)


@vector_jit
def log_softmax_row(x, args, i):
    (out,) = args
    row_max, others, n_at_max = row_max_sum_exp(x[i])
    store_log_softmax(x[i], out[i], row_max, log_sum_or_nan(row_max, others, n_at_max))


@vector_jit
def log_softmax_tile(x, args, start, stop, exps, row_max, others, counts, row_scratch):
    (out,) = args
    n_classes = x.shape[1]
    # Per-row log(sum) first, in their own (vectorised) loop.
    log_sums = row_scratch[0]
    for r in range(stop - start):
        log_sums[r] = log_sum_or_nan(row_max[r], others[r], counts[r])
    tile = x[start:stop]
    out_tile = out[start:stop]
    for r in range(stop - start):
        shift = row_max[r]
        log_sum = cast_like(log_sums[r], x)
        for c in range(n_classes):
            out_tile[r, c] = log_softmax_value(tile[r, c], shift, log_sum)


@vector_jit
def log_softmax_write_block(x, args, i, block, start, stop):
    out, row_maxes, log_sums = args
    store_log_softmax(x[i, start:stop], out[i, start:stop], row_maxes[i], log_sums[i])


row_operation("log_softmax", row=log_softmax_row, tile=log_softmax_tile)
row_operation("log_softmax_write", block=log_softmax_write_block)


LOG_SOFTMAX = entry_kernels("log_softmax")


@serial_kernel
def _log_softmax_split(x, out, row_scale=None):
    row_maxes, others, counts = split_row_stats(x, row_scale)
    log_sums = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        log_sums[i] = log_sum_or_nan(row_maxes[i], others[i], counts[i])
    scaled_class_split_schedule("log_softmax_write", x, (out, row_maxes, log_sums), row_scale)


def log_softmax(x, out, n_threads=1, row_scale=None):
    n_rows, n_classes = x.shape
    if n_rows == 0 or n_classes == 0:
        return
    _launch_by_shape(usable_threads(n_threads), LOG_SOFTMAX, _log_softmax_split, half_bits(x),
                     out, row_scale=_row_scale_or_none(row_scale))


# --------------------------------------------------------------------------------------
# sigmoid, log_sigmoid (flat arrays)
# --------------------------------------------------------------------------------------


@vector_jit
def store_sigmoid(values, out):
    for j in range(values.shape[0]):
        out[j] = sigmoid_value(values[j])


@vector_jit
def store_log_sigmoid(values, out):
    for j in range(values.shape[0]):
        out[j] = -softplus_of_negative(values[j])


@vector_jit
def sigmoid_span(x, args, start, stop):
    (out,) = args
    store_sigmoid(x[start:stop], out[start:stop])


@vector_jit
def log_sigmoid_span(x, args, start, stop):
    (out,) = args
    store_log_sigmoid(x[start:stop], out[start:stop])


row_operation("sigmoid", flat=sigmoid_span)
row_operation("log_sigmoid", flat=log_sigmoid_span)


SIGMOID = entry_kernels("sigmoid")
LOG_SIGMOID = entry_kernels("log_sigmoid")


def _flat_tasks(n_elements, threads):
    # Below ~64k elements one thread is faster than waking the others.
    return max(1, min(threads, n_elements // 65536))


def _check_flat(x, out):
    """The flat kernels index ``out`` without bounds checks: an ``out`` that is not the
    1-D array of x's shape (np.matrix stays 2-D under reshape(-1)) would be written past
    its end. The API never passes one; this stops a direct caller before memory is hit."""
    if out.ndim != 1 or out.shape != x.shape:
        raise ValueError(
            f"kernel operand out: expected a 1-D array of shape {x.shape}, got shape {out.shape}"
        )


def _launch_flat(kernels, x, out, n_threads):
    _check_flat(x, out)
    if x.shape[0] == 0:
        return
    threads = usable_threads(n_threads)
    launch(threads, kernels.flat, half_bits(x), _flat_tasks(x.shape[0], threads), out)


def sigmoid(x, out, n_threads=1):
    _launch_flat(SIGMOID, x, out, n_threads)


def log_sigmoid(x, out, n_threads=1):
    _launch_flat(LOG_SIGMOID, x, out, n_threads)


# --------------------------------------------------------------------------------------
# Labels: which are invalid, and the weight of the others
# --------------------------------------------------------------------------------------
# One pass over the labels replaces the NumPy checks (min, max, count of kept labels: three
# passes and a temporary) that cost as much as the narrow cross-entropy kernel itself.


@vector_jit
def label_chunk_stats(labels, weight, ignore_index):
    """(count of invalid labels, float64 sum of weight[label] over the kept valid ones)."""
    n_classes = weight.shape[0]
    n_invalid = 0
    kept_weight = 0.0
    for i in range(labels.shape[0]):
        label = labels[i]
        kept = label != ignore_index
        valid = label >= 0 and label < n_classes
        n_invalid += kept and not valid
        if kept and valid:
            kept_weight += np.float64(weight[label])
    return n_invalid, kept_weight


@plain_jit
def first_invalid_label(labels, n_classes, ignore_index, start):
    for i in range(start, labels.shape[0]):
        label = labels[i]
        if label != ignore_index and (label < 0 or label >= n_classes):
            return i
    return -1


@plain_jit
def merge_label_chunks(labels, n_classes, ignore_index, n_invalid, kept_weight):
    """(first invalid position or -1, the kept weight summed in chunk order)."""
    total = 0.0
    for chunk in range(n_invalid.shape[0]):
        if n_invalid[chunk]:
            return first_invalid_label(labels, n_classes, ignore_index, chunk * LABEL_CHUNK), np.nan
        total += kept_weight[chunk]
    return -1, total


@plain_jit
def label_chunk_buffers(labels):
    n_chunks = (labels.shape[0] + LABEL_CHUNK - 1) // LABEL_CHUNK
    return np.empty(n_chunks, dtype=np.int64), np.empty(n_chunks, dtype=np.float64)


@plain_jit
def scan_label_chunk(labels, weight, ignore_index, chunk, n_invalid, kept_weight):
    start = chunk * LABEL_CHUNK
    n_invalid[chunk], kept_weight[chunk] = label_chunk_stats(
        labels[start:start + LABEL_CHUNK], weight, ignore_index)


def _label_stats(labels, weight, ignore_index):
    n_invalid, kept_weight = label_chunk_buffers(labels)
    for chunk in prange(n_invalid.shape[0]):
        scan_label_chunk(labels, weight, ignore_index, chunk, n_invalid, kept_weight)
    return merge_label_chunks(labels, weight.shape[0], ignore_index, n_invalid, kept_weight)


LABEL_STATS = chunk_kernels(_label_stats)


def label_stats(labels, weight, ignore_index, n_threads=1):
    # One chunk, or one thread: no parallel launch (~1 us) for the common small batch.
    first_invalid, kept_weight = launch_chunks(
        usable_threads(n_threads), LABEL_STATS, labels.shape[0] <= LABEL_CHUNK, labels,
        weight, int(ignore_index))
    return int(first_invalid), float(kept_weight)


# --------------------------------------------------------------------------------------
# cross-entropy with integer labels
# --------------------------------------------------------------------------------------
# With a = (1 - eps) w[y] and smoothing coefficient eps / C, the row loss is
#   a (lse - x[y]) + eps/C * sum_{c: w[c] != 0} w[c] (lse - x[c])
# (terms with a zero coefficient are 0 even where x = -inf, as in the reference), written
# with lse - x = log(sum exp) - (x - max) so large logits do not cancel. The gradient is
#   grad_scale * (softmax(x) * (a + eps/C * sum(w)) - q),  q = eps/C * w + a * onehot(y).


@vector_jit
def weighted_shifted_sum(values, weight, shift):
    """sum over w != 0 of w * (x - shift), float64; zero weights skip x = -inf."""
    total = 0.0
    for j in range(values.shape[0]):
        w = np.float64(weight[j])
        total += w * (np.float64(values[j]) - np.float64(shift)) if w != 0.0 else 0.0
    return total


@vector_jit
def row_weighted_shifted_sum(row, weight, shift):
    """Block by block in order, so the class-split kernel reproduces it exactly."""
    n_classes = row.shape[0]
    total = 0.0
    for block in range(n_blocks_of(n_classes)):
        start, stop = block_bounds(n_classes, block)
        total += weighted_shifted_sum(row[start:stop], weight[start:stop], shift)
    return total


@vector_jit
def smoothing_weight_summary(weight, eps):
    """(sum of the weights, whether any weight is nonzero): only the smoothing term uses
    them, so without smoothing the C-long pass is skipped (it is as long as a row)."""
    if eps == 0.0:
        return 0.0, False
    total = 0.0
    n_nonzero = 0
    for c in range(weight.shape[0]):
        total += np.float64(weight[c])
        n_nonzero += 1 if weight[c] != 0 else 0
    return total, n_nonzero > 0


@plain_jit
def ignored_row_grad(row_max, sum_exp):
    """The gradient of a row whose label is ignore_index, as torch gives it: 0, or NaN
    where the row's softmax is undefined (it holds NaN or +inf, or only -inf): torch's
    log_softmax backward multiplies the NaN probabilities by the zero upstream gradient."""
    return 0.0 if softmax_is_defined(row_max, sum_exp) else np.nan


@plain_jit
def label_loss(row_max, log_sum, label_logit, label_coef, smoothing_coef, smoothing_sum,
               weight_sum, any_weight):
    """One row's loss from its statistics (log_sum from log_sum_or_nan).
    smoothing_sum = sum w (x - max) over w != 0."""
    loss = 0.0
    if label_coef != 0.0:
        loss += label_coef * (log_sum - (np.float64(label_logit) - np.float64(row_max)))
    if smoothing_coef != 0.0 and any_weight:
        loss += smoothing_coef * (log_sum * weight_sum - smoothing_sum)
    return loss


@plain_jit
def label_grad_coefficients(row_max, sum_exp, label_coef, smoothing_coef, weight_sum,
                            grad_scale):
    """(prob_factor, smoothing_grad, label_grad) with
    grad = exp(x - max) * prob_factor - smoothing_grad * w - label_grad * onehot(y)."""
    if not softmax_is_defined(row_max, sum_exp):
        return np.nan, 0.0, 0.0
    total_q = label_coef + smoothing_coef * weight_sum
    return grad_scale * total_q / sum_exp, grad_scale * smoothing_coef, grad_scale * label_coef


@vector_jit
def store_label_grad(values, grad, weight, row_max, prob_factor, smoothing_grad):
    """grad[j] = exp(x[j] - max) * prob_factor - smoothing_grad * w[j] (label term apart).

    The logits are read before the gradient is written, so grad may be the logits.
    """
    shift = shift_for(row_max)
    factor = cast_like(prob_factor, values)
    if smoothing_grad == 0.0:
        for j in range(values.shape[0]):
            grad[j] = shifted_exp(values[j] - shift) * factor
    else:
        smoothing = cast_like(smoothing_grad, values)
        for j in range(values.shape[0]):
            grad[j] = shifted_exp(values[j] - shift) * factor - smoothing * weight[j]


@vector_jit
def row_cross_entropy_labels(row, grad, label, weight, eps, weight_sum, any_weight,
                             grad_scale, want_grad, ignore_index):
    n_classes = row.shape[0]
    if label == ignore_index:
        if want_grad:
            row_max, others, n_at_max = row_max_sum_exp(row)
            fill(grad, cast_like(ignored_row_grad(row_max, others + n_at_max), grad))
        return 0.0
    row_max, others, n_at_max = row_max_sum_exp(row)
    sum_exp = others + n_at_max
    label_coef = (1.0 - eps) * np.float64(weight[label])
    smoothing_coef = eps / n_classes
    smoothing_sum = 0.0
    if smoothing_coef != 0.0 and any_weight:
        smoothing_sum = row_weighted_shifted_sum(row, weight, shift_for(row_max))
    loss = label_loss(row_max, log_sum_or_nan(row_max, others, n_at_max), row[label],
                      label_coef,
                      smoothing_coef, smoothing_sum, weight_sum, any_weight)
    if want_grad:
        prob_factor, smoothing_grad, label_grad = label_grad_coefficients(
            row_max, sum_exp, label_coef, smoothing_coef, weight_sum, grad_scale)
        store_label_grad(row, grad, weight, row_max, prob_factor, smoothing_grad)
        # In the gradient's dtype: with one class, p * factor - label_grad is exactly 0.
        grad[label] -= cast_like(label_grad, grad)
    return loss


@vector_jit
def cross_entropy_labels_row(x, args, i):
    (labels, weight, ignore_index, eps, loss_out, grad_out, grad_scale, want_grad,
     row_scale, weight_sum, any_weight, no_grad) = args
    grad_row = grad_out[i] if want_grad else no_grad
    # temperature=: the gradient with respect to the unscaled logits carries the row's 1/T
    loss_out[i] = row_cross_entropy_labels(
        x[i], grad_row, labels[i], weight, eps, weight_sum, any_weight,
        row_grad_scale(grad_scale, row_scale, i), want_grad, ignore_index)


@vector_jit
def unsmoothed_label_tile(x, labels, weight, ignore_index, eps, loss_out, grad_out,
                          grad_scale, want_grad, row_scale, start, stop, exps, row_max,
                          log_sums, sums):
    """cross_entropy_labels_tile without label smoothing: the loss and the gradient's
    per-row factors in one branch-free loop across the rows (a branch per row would
    make each a scalar computation), then the gradient rows. An ignored row gets label
    coefficient 0: loss 0, and exp(x - max) * 0, which is ignored_row_grad (0, or NaN
    where the row's softmax is undefined, its factor then being NaN). Overwrites
    log_sums with each row's label_grad and sums with its prob_factor."""
    n_classes = x.shape[1]
    for r in range(stop - start):
        i = start + r
        ignored = labels[i] == ignore_index
        label = 0 if ignored else labels[i]
        label_coef = 0.0 if ignored else (1.0 - eps) * np.float64(weight[label])
        shifted_label = np.float64(x[i, label]) - np.float64(row_max[r])
        loss = label_coef * (log_sums[r] - shifted_label)  # label_loss, no smoothing
        loss_out[i] = loss if label_coef != 0.0 else 0.0
        defined = softmax_is_defined(row_max[r], sums[r])
        row_grad = row_grad_scale(grad_scale, row_scale, i)  # temperature=: 1/T
        prob_factor = row_grad * label_coef / sums[r]  # label_grad_coefficients
        sums[r] = prob_factor if defined else np.nan
        log_sums[r] = row_grad * label_coef if defined else 0.0
    if not want_grad:
        return
    for r in range(stop - start):
        factor = cast_like(sums[r], x)
        grad_row = grad_out[start + r]
        for c in range(n_classes):
            grad_row[c] = exps[c, r] * factor
    for r in range(stop - start):
        i = start + r
        if labels[i] != ignore_index:
            grad_out[i, labels[i]] -= cast_like(log_sums[r], grad_out)


@vector_jit
def cross_entropy_labels_tile(x, args, start, stop, exps, row_max, others, counts,
                              row_scratch):
    (labels, weight, ignore_index, eps, loss_out, grad_out, grad_scale, want_grad,
     row_scale, weight_sum, any_weight, no_grad) = args
    n_classes = x.shape[1]
    smoothing_coef = eps / n_classes
    # The logs first, in a loop of their own that vectorises across the rows: in the
    # branchy per-row loop below each would be a scalar call.
    log_sums = row_scratch[0]
    sums = row_scratch[1]
    for r in range(stop - start):
        log_sums[r] = log_sum_or_nan(row_max[r], others[r], counts[r])
        sums[r] = others[r] + counts[r]
    if not (smoothing_coef != 0.0 and any_weight):
        unsmoothed_label_tile(x, labels, weight, ignore_index, eps, loss_out, grad_out,
                              grad_scale, want_grad, row_scale, start, stop, exps, row_max,
                              log_sums, sums)
        return
    for r in range(stop - start):
        i = start + r
        label = labels[i]
        if label == ignore_index:
            loss_out[i] = 0.0
            if want_grad:
                fill(grad_out[i], cast_like(ignored_row_grad(row_max[r], sums[r]), grad_out))
            continue
        label_coef = (1.0 - eps) * np.float64(weight[label])
        smoothing_sum = 0.0
        if smoothing_coef != 0.0 and any_weight:
            smoothing_sum = weighted_shifted_sum(x[i], weight, shift_for(row_max[r]))
        loss_out[i] = label_loss(row_max[r], log_sums[r], x[i, label], label_coef,
                                 smoothing_coef, smoothing_sum, weight_sum, any_weight)
        if want_grad:
            prob_factor, smoothing_grad, label_grad = label_grad_coefficients(
                row_max[r], sums[r], label_coef, smoothing_coef, weight_sum,
                row_grad_scale(grad_scale, row_scale, i))
            factor = cast_like(prob_factor, x)
            smoothing = cast_like(smoothing_grad, x)
            grad_row = grad_out[i]
            for c in range(n_classes):
                grad_row[c] = exps[c, r] * factor - smoothing * weight[c]
            grad_row[label] -= cast_like(label_grad, grad_out)


@vector_jit
def smoothing_sum_block(x, args, i, block, start, stop):
    """Class split: a block's sum_{w != 0} w (x - max)."""
    weight, row_maxes, block_smoothing = args
    block_smoothing[i, block] = weighted_shifted_sum(
        x[i, start:stop], weight[start:stop], shift_for(row_maxes[i]))


@vector_jit
def label_grad_block(x, args, i, block, start, stop):
    """Class split: a block of the gradient from its row's coefficients."""
    labels, weight, ignore_index, grad_out, row_maxes, prob_factors, smoothing_grads = args
    if labels[i] == ignore_index:  # prob_factors holds ignored_row_grad
        fill(grad_out[i, start:stop], cast_like(prob_factors[i], grad_out))
    else:
        store_label_grad(x[i, start:stop], grad_out[i, start:stop], weight[start:stop],
                         row_maxes[i], prob_factors[i], smoothing_grads[i])


@plain_jit
def cross_entropy_labels_prepare(args):
    """The steps' operands: the call's, the weight summary, and an empty gradient row for
    calls without a gradient."""
    (labels, weight, ignore_index, eps, loss_out, grad_out, grad_scale, want_grad,
     row_scale) = args
    weight_sum, any_weight = smoothing_weight_summary(weight, eps)
    no_grad = np.empty(0, dtype=grad_out.dtype)
    return (labels, weight, ignore_index, eps, loss_out, grad_out, grad_scale, want_grad,
            row_scale, weight_sum, any_weight, no_grad)


row_operation("cross_entropy_labels", prepare=cross_entropy_labels_prepare,
              row=cross_entropy_labels_row, tile=cross_entropy_labels_tile)
row_operation("smoothing_sum", block=smoothing_sum_block)
row_operation("label_grad", block=label_grad_block)


CROSS_ENTROPY_LABELS = entry_kernels("cross_entropy_labels")


@serial_kernel
def _cross_entropy_labels_split(x, labels, weight, ignore_index, eps, loss_out, grad_out,
                                grad_scale, want_grad, row_scale=None):
    # Serial glue around the parallel passes (split_row_stats and the class splits of
    # smoothing_sum_block and label_grad_block): in a parallel function every np.zeros would be a parallel loop
    # of its own, and those launches cost more than this whole kernel gains from threads.
    n_rows, n_classes = x.shape
    n_blocks = n_blocks_of(n_classes)
    weight_sum, any_weight = smoothing_weight_summary(weight, eps)
    smoothing_coef = eps / n_classes
    row_maxes, others, counts = split_row_stats(x, row_scale)
    sums = others + counts
    block_smoothing = np.zeros((n_rows, n_blocks))
    if smoothing_coef != 0.0 and any_weight:
        scaled_class_split_schedule("smoothing_sum", x, (weight, row_maxes, block_smoothing),
                                    row_scale)
    prob_factors = np.zeros(n_rows)
    smoothing_grads = np.zeros(n_rows)
    label_grads = np.zeros(n_rows)
    for i in range(n_rows):
        label = labels[i]
        if label == ignore_index:
            loss_out[i] = 0.0
            prob_factors[i] = ignored_row_grad(row_maxes[i], sums[i])
            continue
        smoothing_sum = 0.0
        for block in range(n_blocks):  # same order as row_weighted_shifted_sum
            smoothing_sum += block_smoothing[i, block]
        label_coef = (1.0 - eps) * np.float64(weight[label])
        log_sum = log_sum_or_nan(row_maxes[i], others[i], counts[i])
        loss_out[i] = label_loss(row_maxes[i], log_sum,
                                 scaled_value_at(x, i, label, row_scale), label_coef,
                                 smoothing_coef, smoothing_sum, weight_sum, any_weight)
        prob_factors[i], smoothing_grads[i], label_grads[i] = label_grad_coefficients(
            row_maxes[i], sums[i], label_coef, smoothing_coef, weight_sum,
            row_grad_scale(grad_scale, row_scale, i))
    if want_grad:
        scaled_class_split_schedule("label_grad", x, (labels, weight, ignore_index, grad_out,
                                                      row_maxes, prob_factors,
                                                      smoothing_grads), row_scale)
        for i in range(n_rows):
            if labels[i] != ignore_index:
                grad_out[i, labels[i]] -= cast_like(label_grads[i], grad_out)


def _wants_grad(grad_out, x):
    return grad_out.shape == x.shape and grad_out.size > 0


def cross_entropy_labels(x, labels, weight, ignore_index, label_smoothing, loss_out,
                         grad_out, grad_scale, n_threads=1, row_scale=None):
    if x.shape[0] == 0:
        return
    row_scale = _row_scale_or_none(row_scale)
    operands = (labels, weight, int(ignore_index), float(label_smoothing), loss_out,
                grad_out, float(grad_scale), _wants_grad(grad_out, x))
    # row_scale is an operand of the steps (the gradient's 1/T) and of the schedules (the
    # load); the split takes it once, as the last operand.
    _launch_by_shape(usable_threads(n_threads), CROSS_ENTROPY_LABELS,
                     _cross_entropy_labels_split, half_bits(x), *operands, row_scale,
                     row_scale=row_scale, split_takes_scale=False)


# --------------------------------------------------------------------------------------
# cross-entropy with probability targets
# --------------------------------------------------------------------------------------
# q = w * ((1 - eps) t + eps / C); loss = log(sum exp) * sum(q) - sum q (x - max), which is
# -sum q log_softmax(x) without cancellation for large logits; like the reference, a zero q
# times a -inf log-probability is NaN. Gradient grad_scale * (softmax * sum(q) - q).


@vector_jit
def probs_sums(values, target, weight, shift, keep, spread):
    """(others, n_at_max, sum q, sum q (x - shift)) in float64."""
    others = np.float64(0.0)  # float64 in Python mode too (float32 + 0.0 stays float32)
    n_at_max = 0.0
    sum_q = 0.0
    sum_q_shifted = 0.0
    for j in range(values.shape[0]):
        q = np.float64(weight[j]) * (keep * np.float64(target[j]) + spread)
        at_max = cast_like(values[j] == shift, values)
        others += np.float64(shifted_exp(values[j] - shift) - at_max)  # see sum_exp_of
        n_at_max += np.float64(at_max)
        sum_q += q
        sum_q_shifted += q * (np.float64(values[j]) - np.float64(shift))
    return others, n_at_max, sum_q, sum_q_shifted


@vector_jit
def row_probs_sums(row, target, weight, shift, keep, spread):
    """The three sums of a row, block by block: one running sum over 100k+ terms loses
    ~1e-14 relative, which the probabilities and the loss would inherit."""
    n_classes = row.shape[0]
    others = np.float64(0.0)
    n_at_max = 0.0
    sum_q = 0.0
    sum_q_shifted = 0.0
    for block in range(n_blocks_of(n_classes)):
        start, stop = block_bounds(n_classes, block)
        block_others, block_count, block_q, block_q_shifted = probs_sums(
            row[start:stop], target[start:stop], weight[start:stop], shift, keep, spread)
        others += block_others
        n_at_max += block_count
        sum_q += block_q
        sum_q_shifted += block_q_shifted
    return others, n_at_max, sum_q, sum_q_shifted


@vector_jit
def store_probs_grad(values, target, weight, grad, shift, prob_factor, keep_scaled,
                     spread_scaled):
    """grad = exp(x - shift) * prob_factor - grad_scale * q; reads x before writing grad."""
    for j in range(values.shape[0]):
        q_scaled = np.float64(weight[j]) * (keep_scaled * np.float64(target[j]) + spread_scaled)
        grad[j] = shifted_exp(values[j] - shift) * prob_factor - q_scaled


@vector_jit
def row_cross_entropy_probs(row, target, grad, weight, eps, grad_scale, want_grad):
    keep = 1.0 - eps
    spread = eps / row.shape[0]
    row_max = max_of(row)
    shift = shift_for(row_max)
    others, n_at_max, sum_q, sum_q_shifted = row_probs_sums(row, target, weight, shift, keep,
                                                            spread)
    sum_exp = others + n_at_max
    defined = softmax_is_defined(row_max, sum_exp)
    loss = log_sum_or_nan(row_max, others, n_at_max) * sum_q - sum_q_shifted
    if want_grad:
        if defined:
            prob_factor = cast_like(grad_scale * sum_q / sum_exp, row)
        else:
            prob_factor = cast_like(np.nan, row)
        store_probs_grad(row, target, weight, grad, shift, prob_factor, grad_scale * keep,
                         grad_scale * spread)
    return loss


@vector_jit
def cross_entropy_probs_row(x, args, i):
    target, weight, eps, loss_out, grad_out, grad_scale, want_grad, row_scale, no_grad = args
    grad_row = grad_out[i] if want_grad else no_grad
    # temperature=: the gradient with respect to the unscaled logits carries the row's 1/T
    loss_out[i] = row_cross_entropy_probs(x[i], target[i], grad_row, weight, eps,
                                          row_grad_scale(grad_scale, row_scale, i), want_grad)


@plain_jit
def with_empty_grad_row(args):
    """The call's operands and an empty gradient row (the row's gradient when none is
    asked for): the "prepare" step of cross_entropy_probs and bce_with_logits, whose
    operands both hold grad_out fifth."""
    grad_out = args[4]
    return args + (np.empty(0, dtype=grad_out.dtype),)


row_operation("cross_entropy_probs", prepare=with_empty_grad_row,
              row=cross_entropy_probs_row)
CROSS_ENTROPY_PROBS = entry_kernels("cross_entropy_probs")


def cross_entropy_probs(x, target, weight, label_smoothing, loss_out, grad_out, grad_scale,
                        n_threads=1, row_scale=None):
    if x.shape[0] == 0:
        return
    row_scale = _row_scale_or_none(row_scale)
    operands = (half_bits(target), weight, float(label_smoothing), loss_out, grad_out,
                float(grad_scale), _wants_grad(grad_out, x), row_scale)
    _launch_rows(usable_threads(n_threads), CROSS_ENTROPY_PROBS, half_bits(x), *operands,
                 row_scale=row_scale)


# --------------------------------------------------------------------------------------
# binary cross-entropy with logits
# --------------------------------------------------------------------------------------
# Element loss w ((1 - t) x + (1 + (pw - 1) t) softplus(-x)), gradient
# grad_scale w (sigmoid(x) (1 + (pw - 1) t) - pw t): the reference's formulas, so inf and
# NaN inputs give the same values. Computed in float64 for float32 input too (as the cython
# backend does): in float32, (1 - t) x or w times a term overflows to inf for logits near
# 3e38 whose loss, or whose row sum, is finite, and the terms cancel for x << 0.


@vector_jit
def bce_span(values, target, weight, pos_weight, loss, grad, grad_scale, sum_loss,
             want_grad):
    """Returns the float64 loss sum when sum_loss, else writes loss[j] per element."""
    total = 0.0
    for j in range(values.shape[0]):
        x = np.float64(values[j])
        t = np.float64(target[j])
        w = np.float64(weight[j])
        pw = np.float64(pos_weight[j])
        log_weight = 1.0 + (pw - 1.0) * t
        element_loss = w * ((1.0 - t) * x + log_weight * softplus_of_negative(x))
        if sum_loss:
            total += element_loss
        else:
            loss[j] = element_loss
        if want_grad:
            grad[j] = grad_scale * w * (sigmoid_value(x) * log_weight - pw * t)
    return total


@vector_jit
def row_bce(row, target, weight, pos_weight, loss, grad, grad_scale, sum_loss, want_grad):
    """One row; loss[0] receives the row's sum when sum_loss, else loss[j] each element."""
    n_classes = row.shape[0]
    total = 0.0
    # Summed block by block: one running sum over 100k+ terms loses ~1e-14 relative.
    for block in range(n_blocks_of(n_classes)):
        start, stop = block_bounds(n_classes, block)
        total += bce_span(row[start:stop], target[start:stop], weight[start:stop],
                          pos_weight[start:stop], loss[start:stop], grad[start:stop],
                          grad_scale, sum_loss, want_grad)
    if sum_loss:
        loss[0] = total


@vector_jit
def bce_row(x, args, i):
    (target, weight, pos_weight, loss_out, grad_out, grad_scale, sum_loss, want_grad,
     row_scale, no_grad) = args
    grad_row = grad_out[i] if want_grad else no_grad
    weight_row = weight[i] if weight.shape[0] != 1 else weight[0]
    pos_weight_row = pos_weight[i] if pos_weight.shape[0] != 1 else pos_weight[0]
    # temperature=: the gradient with respect to the unscaled logits carries the row's 1/T
    row_bce(x[i], target[i], weight_row, pos_weight_row, loss_out[i], grad_row,
            row_grad_scale(grad_scale, row_scale, i), sum_loss, want_grad)


row_operation("bce_with_logits", prepare=with_empty_grad_row, row=bce_row)
BCE_WITH_LOGITS = entry_kernels("bce_with_logits")


def bce_with_logits(x, target, weight, pos_weight, loss_out, grad_out, grad_scale,
                    n_threads=1, row_scale=None):
    n_rows, n_classes = x.shape
    if n_rows == 0:
        return
    sum_loss = loss_out.shape[1] == 1 and n_classes != 1
    row_scale = _row_scale_or_none(row_scale)
    operands = (half_bits(target), weight, pos_weight, loss_out, grad_out, float(grad_scale),
                sum_loss, _wants_grad(grad_out, x), row_scale)
    _launch_rows(usable_threads(n_threads), BCE_WITH_LOGITS, half_bits(x), *operands,
                 row_scale=row_scale)


# --------------------------------------------------------------------------------------
# backward passes
# --------------------------------------------------------------------------------------


@vector_jit
def row_softmax_backward(dy, y, out):
    dot = 0.0
    for j in range(dy.shape[0]):
        dot += np.float64(dy[j]) * np.float64(y[j])
    for j in range(dy.shape[0]):
        out[j] = np.float64(y[j]) * (np.float64(dy[j]) - dot)


@vector_jit
def row_log_softmax_backward(dy, y, out):
    total = 0.0
    for j in range(dy.shape[0]):
        total += np.float64(dy[j])
    for j in range(dy.shape[0]):
        out[j] = np.float64(dy[j]) - np.float64(fast_exp(y[j])) * total


@vector_jit
def softmax_backward_row(dy, args, i):
    y, out = args
    row_softmax_backward(dy[i], y[i], out[i])


@vector_jit
def log_softmax_backward_row(dy, args, i):
    y, out = args
    row_log_softmax_backward(dy[i], y[i], out[i])


row_operation("softmax_backward", row=softmax_backward_row)
row_operation("log_softmax_backward", row=log_softmax_backward_row)


SOFTMAX_BACKWARD = entry_kernels("softmax_backward")
LOG_SOFTMAX_BACKWARD = entry_kernels("log_softmax_backward")


def softmax_backward(dy, y, out, n_threads=1):
    if dy.shape[0] == 0 or dy.shape[1] == 0:
        return
    launch(usable_threads(n_threads), SOFTMAX_BACKWARD.rows, half_bits(dy), half_bits(y), out)


def log_softmax_backward(dy, y, out, n_threads=1):
    if dy.shape[0] == 0 or dy.shape[1] == 0:
        return
    launch(usable_threads(n_threads), LOG_SOFTMAX_BACKWARD.rows, half_bits(dy), half_bits(y),
           out)


# --------------------------------------------------------------------------------------
# scoring: score_multiclass, score_binary, score_multilabel
# --------------------------------------------------------------------------------------
# Every field logitcore.score asks for, in ONE read of each row (the reference is
# numpy_ref.score_multiclass & co.; edge rows as the table in logitcore/_score.py). An
# output of size 0 was not asked for: it is neither computed nor written.
#
# Multiclass, per block of a row (the block is in L1 after its max pass):
# * the max (max_of), then with its shift the exp-sum state (others, n_at_max) and in
#   the same loop sum (x - shift) e (entropy) and the sum of e^2 over the terms off the
#   max (brier; the terms at the max add n_at_max, as in others, so that a saturated row
#   keeps its small terms), always all four, so that every float field has the same bits
#   whichever other fields are asked;
# * the top list: the class indices of the k_needed largest logits so far, by descending
#   logit, ties in class order (classes arrive in index order and an equal logit goes
#   after); a chunk whose max does not beat the k-th logit is skipped after one
#   vectorised max;
#   narrow rows of few classes count each class's place in the list instead
#   (tile_top_by_rank), for the whole row tile at once;
# * how many logits are NaN and how many exceed the label's logit (read first: the rank).
# Blocks merge as the row state does (merge_block_stats), the extra sums rescaled by
# exp(block max - row max) (merge_score_blocks); top lists by inserting a block's
# entries in block order. The rows schedule walks a row's blocks in order, the class
# split computes them on any thread and merges them in the same order with the same
# functions, and the narrow schedule takes the tile's row states: one finish
# (finish_score_rows, a tile at a time) writes every field. Results are the same bits
# on any thread count.

# Elements per chunk of the top-list scan: one vectorised max decides whether the chunk
# can hold a class of the top list at all.
ORDER_CHUNK = 64
# Narrow rows up to this many classes (or up to 4 per top-list entry) take their top
# lists by counting every class's place (tile_top_by_rank, C^2 vectorised compares)
# rather than by insertion, whose branches mispredict on every other class.
RANK_SELECT_MAX_CLASSES = 16

# The per-row helpers of the scoring section are inlined by numba itself (before LLVM):
# on narrow rows they run once per row of a few classes, where a call that passes the
# operand tuple and array views costs as much as the row's arithmetic.
inline_jit = njit(error_model="numpy", inline="always")


@vector_jit
def score_sums_of(values, shift):
    """(others, n_at_max, weighted, squares) of values for ``shift``: sum_exp_of's two
    sums, weighted = sum (x - shift) e (0 for the terms whose e is 0: masked classes) and
    squares = the sum of e^2 over the terms off the shift (those at it add 1 each, counted
    by n_at_max), in one loop; float32 terms summed per SUM_CHUNK as in sum_exp_of."""
    others = np.float64(0.0)
    n_at_max = np.float64(0.0)
    weighted = np.float64(0.0)
    squares = np.float64(0.0)
    zero = cast_like(0.0, values)
    for start in range(0, values.shape[0], SUM_CHUNK):
        prefetch_ahead(values, start)
        chunk = values[start : start + SUM_CHUNK]
        partial = zero
        count = zero
        partial_weighted = zero
        partial_squares = zero
        for j in range(chunk.shape[0]):
            at_max = cast_like(chunk[j] == shift, values)
            shifted = chunk[j] - shift
            e = shifted_exp(shifted)
            partial += e - at_max
            count += at_max
            partial_weighted += shifted * e if e != zero else zero
            partial_squares += e * e - at_max
        others += partial
        n_at_max += count
        weighted += partial_weighted
        squares += partial_squares
    return others, n_at_max, weighted, squares


@vector_jit
def score_block_sums(values, want_sums):
    """(max, others, n_at_max, weighted, squares) of one block; only the max when no
    asked field needs the sums. The sums come from one loop whatever fields are asked:
    a loop without the two extra sums is vectorised with another order of additions,
    and a probability asked alone would then differ from itself among all the fields in
    its last bits."""
    block_max = max_of(values)
    if not want_sums:
        return block_max, 0.0, 0.0, 0.0, 0.0
    return (block_max,) + score_sums_of(values, shift_for(block_max))


@vector_jit
def merge_score_blocks(block_maxes, block_others, block_counts, block_weighted,
                       block_squares):
    """A row's (max, others, n_at_max, weighted, squares) from its blocks', in block
    order: the row state by merge_block_stats; a block below the row max m scales its e
    by f = exp(block max - m), so its weighted sum becomes f (weighted + (block max - m)
    sum e) and its squares f^2 (squares + n_at_max). Blocks of all -inf (f = 0) add 0."""
    row_max, others, n_at_max = merge_block_stats(block_maxes, block_others, block_counts)
    weighted = 0.0
    squares = 0.0
    for block in range(block_maxes.shape[0]):
        block_max = block_maxes[block]
        if block_max == row_max:
            weighted += block_weighted[block]
            squares += block_squares[block]
            continue
        factor = relative_scale(block_max, row_max)
        if factor != 0.0:
            block_total = block_others[block] + block_counts[block]
            offset = np.float64(block_max) - np.float64(row_max)
            weighted += factor * (block_weighted[block] + offset * block_total)
            squares += factor * factor * (block_squares[block] + block_counts[block])
    return row_max, others, n_at_max, weighted, squares


@inline_jit
def insert_top(row, top, filled, index):
    """Put class ``index`` into the top list ``top[:filled]`` (class indices by descending
    logit); an equal logit goes after, since classes arrive in index order. With a full
    list the caller has checked that the class beats the last one. Returns the length."""
    value = row[index]
    k = top.shape[0]
    j = filled if filled < k else k - 1
    while j > 0 and value > row[top[j - 1]]:
        top[j] = top[j - 1]
        j -= 1
    top[j] = index
    return min(filled + 1, k)


@inline_jit
def scan_top(row, start, stop, top, filled):
    """The classes start:stop of ``row`` into its top list (``filled`` long); returns the
    new length. A chunk whose max does not beat the k-th logit is skipped."""
    k = top.shape[0]
    if k == 0:
        return 0
    j = start
    while filled < k and j < stop:
        filled = insert_top(row, top, filled, j)
        j += 1
    if filled < k or j == stop:
        return filled
    threshold = row[top[k - 1]]
    for chunk_start in range(j, stop, ORDER_CHUNK):
        chunk = row[chunk_start : min(chunk_start + ORDER_CHUNK, stop)]
        if not max_of(chunk) > threshold:
            continue
        for c in range(chunk.shape[0]):
            if chunk[c] > threshold:
                insert_top(row, top, k, chunk_start + c)
                threshold = row[top[k - 1]]
    return filled


@vector_jit
def count_nan_and_larger(values, threshold):
    """(how many values are NaN, how many exceed ``threshold``)."""
    n_nan = 0
    n_larger = 0
    for j in range(values.shape[0]):
        n_nan += 1 if values[j] != values[j] else 0
        n_larger += 1 if values[j] > threshold else 0
    return n_nan, n_larger


@vector_jit
def score_block(row, start, stop, rank_threshold, want_sums, top, filled):
    """Everything one block start:stop of ``row`` adds: (max, others, n_at_max, weighted,
    squares) of the block, the top list's new length, the NaN and larger-than-label
    counts. The three reads run while the block is in L1."""
    values = row[start:stop]
    block_max, others, n_at_max, weighted, squares = score_block_sums(values, want_sums)
    filled = scan_top(row, start, stop, top, filled)
    n_nan, n_larger = count_nan_and_larger(values, rank_threshold)
    return block_max, others, n_at_max, weighted, squares, filled, n_nan, n_larger


@inline_jit
def rank_threshold_of(row, labels, i, ignore_index, want_rank):
    """The label's logit, read before the row (label_rank counts the logits above it);
    +inf, which no logit exceeds, when the rank is not asked or the row is ignored."""
    if want_rank and labels[i] != ignore_index:
        return row[labels[i]]
    return cast_like(np.inf, row)


@inline_jit
def brier_of(row_max, others, n_at_max, squares, label_logit):
    """sum_c (p_c - onehot(y)_c)^2 = sum_{c != y} p_c^2 + (1 - p_y)^2, each part from
    sums that leave the label's term out, so that a saturated row (p_y near 1) keeps its
    small value; NaN where the softmax is undefined."""
    if not softmax_is_defined(row_max, others):
        return np.nan
    shift = np.float64(row_max)
    total = others + n_at_max
    if label_logit == shift:  # the label's term is exactly 1 and counted by n_at_max
        rest = others + (n_at_max - 1.0)
        rest_squares = squares + (n_at_max - 1.0)
    else:
        e = fast_exp(label_logit - shift)
        rest = total - e
        rest_squares = (squares + n_at_max) - e * e
    rest_fraction = rest / total
    return rest_squares / (total * total) + rest_fraction * rest_fraction


@inline_jit
def finish_score_rows(args, first, x, row_maxes, sums, counts):
    """Write every asked field of the rows first, first + 1, ... from their merged states
    (see the section head): row r's max in row_maxes[r], its (others, n_at_max,
    weighted, squares) in sums[:, r] and (filled, n_nan, n_larger) in counts[:, r]. The
    operands are unpacked once for all the rows: unpacked per row, their reference
    counts cost more than a narrow row's fields."""
    (labels, ignore_index, top_k, pred_out, max_logit_out, confidence_out, margin_out,
     logit_margin_out, entropy_out, logsumexp_out, top_k_indices_out, top_k_probs_out,
     label_logprob_out, loss_out, correct_out, label_rank_out, brier_out, want_sums,
     want_extra, want_rank, top_buffer, _, _, _) = args
    for r in range(row_maxes.shape[0]):
        i = first + r
        row = x[i]
        top = top_buffer[i]
        row_max = row_maxes[r]
        others, n_at_max, weighted, squares = sums[0, r], sums[1, r], sums[2, r], sums[3, r]
        filled, n_nan, n_larger = counts[0, r], counts[1, r], counts[2, r]
        nan_row = n_nan > 0
        max64 = np.float64(row_max)
        # log(sum exp(x - max)), NaN where there is no softmax (unused without the sums)
        log_sum = log_sum_or_nan(row_max, others, n_at_max) if want_sums else np.nan
        pred = -1 if nan_row or filled == 0 else top[0]
        if pred_out.shape[0]:
            pred_out[i] = pred
        if max_logit_out.shape[0]:
            max_logit_out[i] = np.nan if nan_row else max64
        confidence = fast_exp(-log_sum) if want_sums else np.nan  # exp((M - M) - log_sum)
        if confidence_out.shape[0]:
            confidence_out[i] = confidence
        if margin_out.shape[0] or logit_margin_out.shape[0]:
            # the second class of the order; a one-class row has none: logit -inf, p 0
            second = np.float64(row[top[1]]) if filled > 1 else -np.inf
            if margin_out.shape[0]:
                margin_out[i] = confidence - fast_exp((second - max64) - log_sum)
            if logit_margin_out.shape[0]:
                logit_margin_out[i] = np.nan if nan_row else max64 - second
        # From the one log of the row: H = log S - sum (x - M) e / S and lse = M + log S
        # (the edge rows, whose log_sum is NaN, take the row state's own formula).
        defined = not np.isnan(log_sum)
        if entropy_out.shape[0]:
            entropy_out[i] = log_sum - weighted / (others + n_at_max) if defined else np.nan
        if logsumexp_out.shape[0]:
            logsumexp_out[i] = (max64 + log_sum if defined
                                else log_sum_exp_of(row_max, others, n_at_max))
        # probabilities first: the top list may be top_k_indices_out's row itself
        if top_k_probs_out.shape[0]:
            for j in range(top_k):
                logit = np.float64(row[top[j]]) if j < filled else np.nan
                top_k_probs_out[i, j] = fast_exp((logit - max64) - log_sum)
        if top_k_indices_out.shape[0]:
            for j in range(top_k):
                top_k_indices_out[i, j] = -1 if nan_row or j >= filled else top[j]
        if labels.shape[0] == 0:
            continue
        label = labels[i]
        kept = label != ignore_index
        label_logit = np.float64(row[label]) if kept else 0.0
        label_logprob = (label_logit - max64) - log_sum if kept else 0.0
        if label_logprob_out.shape[0]:
            label_logprob_out[i] = label_logprob
        if loss_out.shape[0]:
            loss_out[i] = 0.0 - label_logprob  # a certain label: loss 0.0, not -0.0
        scored = kept and not nan_row
        if correct_out.shape[0]:
            correct_out[i] = 1 if scored and pred == label else 0
        if label_rank_out.shape[0]:
            label_rank_out[i] = 1 + n_larger if scored else 0
        if brier_out.shape[0]:
            brier_out[i] = brier_of(row_max, others, n_at_max, squares, label_logit) if kept else 0.0


@inline_jit
def finish_one_score_row(args, x, i, row_max, others, n_at_max, weighted, squares, filled,
                         n_nan, n_larger):
    """finish_score_rows for the one row i of x, its state kept in the call's per-row
    buffers (args[21:24]; allocated for the rows and class-split schedules only)."""
    row_maxes, row_sums, row_counts = args[21], args[22], args[23]
    row_maxes[i] = row_max
    row_sums[0, i], row_sums[1, i], row_sums[2, i], row_sums[3, i] = (others, n_at_max,
                                                                      weighted, squares)
    row_counts[0, i], row_counts[1, i], row_counts[2, i] = filled, n_nan, n_larger
    finish_score_rows(args, i, x, row_maxes[i : i + 1], row_sums[:, i : i + 1],
                      row_counts[:, i : i + 1])


@vector_jit
def score_multiclass_row(x, args, i):
    """Rows schedule: row i's blocks in order; the block sums merged by
    merge_score_blocks (as the class split does), the top list and counts carried
    along."""
    labels, ignore_index = args[0], args[1]
    want_sums, want_rank, top_buffer = args[17], args[19], args[20]
    row = x[i]
    n_classes = row.shape[0]
    top = top_buffer[i]
    rank_threshold = rank_threshold_of(row, labels, i, ignore_index, want_rank)
    if n_classes <= BLOCK_CLASSES:  # one block: its state is the row's
        row_max, others, n_at_max, weighted, squares, filled, n_nan, n_larger = score_block(
            row, 0, n_classes, rank_threshold, want_sums, top, 0)
    else:
        n_blocks = n_blocks_of(n_classes)
        block_maxes = np.empty(n_blocks, dtype=row.dtype)
        block_sums = np.empty((4, n_blocks))
        filled = 0
        n_nan = 0
        n_larger = 0
        for block in range(n_blocks):
            start, stop = block_bounds(n_classes, block)
            (block_maxes[block], block_sums[0, block], block_sums[1, block],
             block_sums[2, block], block_sums[3, block], filled, block_nan,
             block_larger) = score_block(row, start, stop, rank_threshold, want_sums, top,
                                         filled)
            n_nan += block_nan
            n_larger += block_larger
        row_max, others, n_at_max, weighted, squares = merge_score_blocks(
            block_maxes, block_sums[0], block_sums[1], block_sums[2], block_sums[3])
    finish_one_score_row(args, x, i, row_max, others, n_at_max, weighted, squares,
                         filled, n_nan, n_larger)


@vector_jit
def score_multiclass_block(x, args, i, block, start, stop):
    """Class split: one block's state, top list and counts into the split's buffers."""
    # the call's operands (as the row step gets them), then the split's buffers
    labels, ignore_index = args[0], args[1]
    want_sums, want_rank = args[17], args[19]
    block_maxes, block_sums, block_tops, block_counts = args[24], args[25], args[26], args[27]
    row = x[i]
    (block_maxes[i, block], block_sums[0, i, block], block_sums[1, i, block],
     block_sums[2, i, block], block_sums[3, i, block], block_counts[0, i, block],
     block_counts[1, i, block], block_counts[2, i, block]) = score_block(
        row, start, stop, rank_threshold_of(row, labels, i, ignore_index, want_rank),
        want_sums, block_tops[i, block], 0)


@vector_jit
def transposed_tile_copy(x, start, stop):
    """The logits of the narrow rows start:stop as (classes, rows): the passes below run
    across the tile's rows, one lane per row."""
    n_classes = x.shape[1]
    logits = np.empty((n_classes, stop - start), dtype=x.dtype)
    for r in range(stop - start):
        for c in range(n_classes):
            logits[c, r] = x[start + r, c]
    return logits


@vector_jit
def tile_top_by_rank(logits, start, top_buffer):
    """The top lists of the tile's rows (``logits`` from transposed_tile_copy, its first row is
    row ``start``) without a branch per class: a class's place in its row is the number
    of classes with a larger logit plus those of lower index with an equal one (the top
    list's order, ties to the lower index), counted with the rows across the lanes. A row
    with a NaN gets some list of valid class indices (no field reads it)."""
    n_classes, n_rows = logits.shape
    k = top_buffer.shape[1]
    places = np.empty(n_rows, dtype=np.int64)
    for r in range(n_rows):
        for j in range(k):
            top_buffer[start + r, j] = 0
    for c in range(n_classes):
        column = logits[c]
        for r in range(n_rows):
            places[r] = 0
        for other in range(n_classes):
            other_column = logits[other]
            if other < c:
                for r in range(n_rows):
                    places[r] += 1 if other_column[r] >= column[r] else 0
            elif other > c:
                for r in range(n_rows):
                    places[r] += 1 if other_column[r] > column[r] else 0
        for r in range(n_rows):
            if places[r] < k:
                top_buffer[start + r, places[r]] = c


@vector_jit
def score_multiclass_tile(x, args, start, stop, exps, row_max, others, counts, row_scratch):
    """Narrow schedule: the tile's row states come with it; the extra sums, the NaN and
    larger-than-label counts and (for few classes) the top lists across the tile's rows,
    then each row's fields."""
    labels, ignore_index = args[0], args[1]
    want_extra, want_rank, top_buffer = args[18], args[19], args[20]
    n_rows = stop - start
    n_classes = x.shape[1]
    k = top_buffer.shape[1]
    by_rank = k > 0 and (n_classes <= RANK_SELECT_MAX_CLASSES or n_classes <= 4 * k)
    if want_extra or want_rank or by_rank:
        logits = transposed_tile_copy(x, start, stop)
    else:
        logits = transposed_tile_copy(x, start, start)  # empty: not read
    weighted = row_scratch[0]
    squares = row_scratch[1]
    fill(weighted, 0.0)
    fill(squares, 0.0)
    if want_extra:
        shifts = np.empty(n_rows, dtype=x.dtype)
        for r in range(n_rows):
            shifts[r] = shift_for(row_max[r])
        for c in range(n_classes):
            column = logits[c]
            exp_column = exps[c]
            for r in range(n_rows):
                e = exp_column[r]
                at_max = 1.0 if column[r] == shifts[r] else 0.0
                term = (np.float64(column[r]) - np.float64(shifts[r])) * np.float64(e)
                weighted[r] += term if e != 0 else 0.0
                squares[r] += np.float64(e * e) - at_max
    # an exp is NaN exactly where its logit is (x - shift is never inf - inf)
    n_nan = np.zeros(n_rows, dtype=np.int64)
    for c in range(n_classes):
        exp_column = exps[c]
        for r in range(n_rows):
            n_nan[r] += 1 if exp_column[r] != exp_column[r] else 0
    n_larger = np.zeros(n_rows, dtype=np.int64)
    if want_rank:
        thresholds = np.empty(n_rows, dtype=x.dtype)
        for r in range(n_rows):
            thresholds[r] = rank_threshold_of(x[start + r], labels, start + r,
                                              ignore_index, want_rank)
        for c in range(n_classes):
            column = logits[c]
            for r in range(n_rows):
                n_larger[r] += 1 if column[r] > thresholds[r] else 0
    if by_rank:
        tile_top_by_rank(logits, start, top_buffer)
    sums = np.empty((4, n_rows))
    for r in range(n_rows):
        sums[0, r] = others[r]
        sums[1, r] = counts[r]
        sums[2, r] = weighted[r]
        sums[3, r] = squares[r]
    row_counts = np.empty((3, n_rows), dtype=np.int64)
    for r in range(n_rows):
        if by_rank:
            row_counts[0, r] = min(k, n_classes)
        else:
            row_counts[0, r] = scan_top(x[start + r], 0, n_classes, top_buffer[start + r], 0)
        row_counts[1, r] = n_nan[r]
        row_counts[2, r] = n_larger[r]
    finish_score_rows(args, start, x, row_max[:n_rows], sums, row_counts)


row_operation("score_multiclass", row=score_multiclass_row, tile=score_multiclass_tile)
row_operation("score_multiclass_block", block=score_multiclass_block)


SCORE_MULTICLASS = entry_kernels("score_multiclass")


@serial_kernel
def _score_multiclass_split(x, *args):
    # Serial glue around the parallel class split of the blocks: merge each row's block
    # states, top lists and counts in block order, then write the fields.
    top_buffer = args[20]
    n_rows, n_classes = x.shape
    n_blocks = n_blocks_of(n_classes)
    k = top_buffer.shape[1]
    block_maxes = np.empty((n_rows, n_blocks), dtype=x.dtype)
    block_sums = np.empty((4, n_rows, n_blocks))
    block_tops = np.empty((n_rows, n_blocks, k), dtype=np.int64)
    block_counts = np.empty((3, n_rows, n_blocks), dtype=np.int64)  # filled, NaN, larger
    class_split_schedule("score_multiclass_block", x,
                         args + (block_maxes, block_sums, block_tops, block_counts))
    for i in range(n_rows):
        row = x[i]
        row_max, others, n_at_max, weighted, squares = merge_score_blocks(
            block_maxes[i], block_sums[0, i], block_sums[1, i], block_sums[2, i],
            block_sums[3, i])
        top = top_buffer[i]
        filled = 0
        for block in range(n_blocks):
            for j in range(block_counts[0, i, block]):
                index = block_tops[i, block, j]
                if filled < k or row[index] > row[top[k - 1]]:
                    filled = insert_top(row, top, filled, index)
        n_nan = 0
        n_larger = 0
        for block in range(n_blocks):
            n_nan += block_counts[1, i, block]
            n_larger += block_counts[2, i, block]
        finish_one_score_row(args, x, i, row_max, others, n_at_max, weighted, squares,
                             filled, n_nan, n_larger)


def _row_state_buffers(x, n_threads):
    """Per-row state buffers of finish_one_score_row (max, sums, counts), for the rows
    and class-split schedules; narrow tiles keep their own, so these are empty there."""
    n_rows, n_classes = x.shape
    threads = usable_threads(n_threads)
    if not _splits_classes(n_rows, n_classes, threads) and _is_narrow(n_classes):
        n_rows = 0
    return (np.empty(n_rows, x.dtype), np.empty((4, n_rows)),
            np.empty((3, n_rows), np.int64))


def _asked(*outputs):
    return any(output.size for output in outputs)


def score_multiclass(x, labels, ignore_index, top_k, pred_out, max_logit_out,
                     confidence_out, margin_out, logit_margin_out, entropy_out,
                     logsumexp_out, top_k_indices_out, top_k_probs_out, label_logprob_out,
                     loss_out, correct_out, label_rank_out, brier_out, n_threads=1):
    n_rows, n_classes = x.shape
    if n_rows == 0:
        return
    # The length of the top list: the top k asked, two classes for the margins, one
    # for the prediction.
    k_needed = max(top_k if _asked(top_k_indices_out, top_k_probs_out) else 0,
                   2 if _asked(margin_out, logit_margin_out) else 0,
                   1 if _asked(pred_out, correct_out) else 0)
    if top_k_indices_out.size and top_k_indices_out.shape[1] == k_needed:
        top_buffer = top_k_indices_out  # the list is the output itself
    else:
        top_buffer = np.empty((n_rows, k_needed), np.int64)
    want_sums = _asked(confidence_out, margin_out, entropy_out, logsumexp_out,
                       top_k_probs_out, label_logprob_out, loss_out, brier_out)
    want_extra = _asked(entropy_out, brier_out)
    want_rank = _asked(label_rank_out)
    _launch_by_shape(usable_threads(n_threads), SCORE_MULTICLASS, _score_multiclass_split,
                     x, labels, int(ignore_index), int(top_k), pred_out, max_logit_out,
                     confidence_out, margin_out, logit_margin_out, entropy_out,
                     logsumexp_out, top_k_indices_out, top_k_probs_out, label_logprob_out,
                     loss_out, correct_out, label_rank_out, brier_out, want_sums,
                     want_extra, want_rank, top_buffer, *_row_state_buffers(x, n_threads))


# Binary: one logit per item, elementwise (flat schedule). Computed in float64 for
# float32 input too, as the reference: pred compares the float64 probability with the
# threshold, and log p = -softplus(-x), log(1 - p) = -softplus(x) stay exact in the tails.


@vector_jit
def score_binary_span(x, args, start, stop):
    (labels, ignore_index, threshold, prob_out, pred_out, confidence_out, entropy_out,
     loss_out, correct_out, brier_out) = args
    has_labels = labels.shape[0] > 0
    for j in range(start, stop):
        value = np.float64(x[j])
        p = sigmoid_value(value)
        predicted = p >= threshold  # False for NaN
        if prob_out.shape[0]:
            prob_out[j] = p
        if pred_out.shape[0]:
            pred_out[j] = 1 if predicted else 0
        if confidence_out.shape[0]:
            confidence_out[j] = p if p >= 1.0 - p else 1.0 - p  # NaN stays NaN
        minus_log_p = softplus_of_negative(value)  # -log p
        minus_log_not_p = softplus_of_negative(-value)  # -log(1 - p)
        if entropy_out.shape[0]:
            # p log p -> 0 as p -> 0 (and (1 - p) log(1 - p) as p -> 1)
            entropy_out[j] = ((p * minus_log_p if p != 0.0 else 0.0)
                              + ((1.0 - p) * minus_log_not_p if p != 1.0 else 0.0))
        if not has_labels:
            continue
        kept = labels[j] != ignore_index
        positive = labels[j] == 1
        if loss_out.shape[0]:
            loss_out[j] = (minus_log_p if positive else minus_log_not_p) if kept else 0.0
        if correct_out.shape[0]:
            correct_out[j] = 1 if kept and value == value and predicted == positive else 0
        if brier_out.shape[0]:
            miss = p - (1.0 if positive else 0.0)
            brier_out[j] = miss * miss if kept else 0.0


row_operation("score_binary", flat=score_binary_span)


SCORE_BINARY = entry_kernels("score_binary")


def score_binary(x, labels, ignore_index, threshold, prob_out, pred_out, confidence_out,
                 entropy_out, loss_out, correct_out, brier_out, n_threads=1):
    if x.shape[0] == 0:
        return
    threads = usable_threads(n_threads)
    launch(threads, SCORE_BINARY.flat, x, _flat_tasks(x.shape[0], threads), labels,
           int(ignore_index), float(threshold), prob_out, pred_out, confidence_out,
           entropy_out, loss_out, correct_out, brier_out)


# Multilabel: independent sigmoids per class with a threshold per class, a row at a time
# (rows schedule), in float64 as binary.


@vector_jit
def score_multilabel_row(x, args, i):
    (targets, threshold, n_predicted_out, loss_out, exact_match_out, true_positives_out,
     false_positives_out, false_negatives_out, pred_out) = args
    row = x[i]
    has_targets = targets.shape[0] > 0
    want_loss = has_targets and loss_out.shape[0] > 0
    n_predicted = 0
    true_positives = 0
    false_positives = 0
    false_negatives = 0
    loss = 0.0
    for c in range(row.shape[0]):
        value = np.float64(row[c])
        predicted = sigmoid_value(value) >= np.float64(threshold[c])  # False for NaN
        if pred_out.shape[0]:
            pred_out[i, c] = 1 if predicted else 0
        n_predicted += 1 if predicted else 0
        if has_targets:
            truth = targets[i, c] != 0
            true_positives += 1 if predicted and truth else 0
            false_positives += 1 if predicted and not truth else 0
            false_negatives += 1 if truth and not predicted else 0
            if want_loss:  # BCE: -log p = softplus(-x) for a 1, softplus(x) for a 0
                loss += softplus_of_negative(value) if truth else softplus_of_negative(-value)
    if n_predicted_out.shape[0]:
        n_predicted_out[i] = n_predicted
    if not has_targets:
        return
    if loss_out.shape[0]:
        loss_out[i] = loss / row.shape[0]
    if exact_match_out.shape[0]:
        exact_match_out[i] = 1 if false_positives + false_negatives == 0 else 0
    if true_positives_out.shape[0]:
        true_positives_out[i] = true_positives
    if false_positives_out.shape[0]:
        false_positives_out[i] = false_positives
    if false_negatives_out.shape[0]:
        false_negatives_out[i] = false_negatives


row_operation("score_multilabel", row=score_multilabel_row)


SCORE_MULTILABEL = entry_kernels("score_multilabel")


def score_multilabel(x, targets, threshold, n_predicted_out, loss_out, exact_match_out,
                     true_positives_out, false_positives_out, false_negatives_out, pred_out,
                     n_threads=1):
    if x.shape[0] == 0:
        return
    launch(usable_threads(n_threads), SCORE_MULTILABEL.rows, x, targets, threshold,
           n_predicted_out, loss_out, exact_match_out, true_positives_out,
           false_positives_out, false_negatives_out, pred_out)


# --------------------------------------------------------------------------------------
# temperature_nll: the NLL of softmax(b x) and its derivatives in b, summed over rows
# --------------------------------------------------------------------------------------
# logitcore.fit_temperature's one pass. Everything is float64 (its root must be right to
# ~1e-9 relative; float32 exps would leave ~1e-7 per row). Per block of a row, with the
# block's shift m (its max, or 0 when not finite), d = x - m <= 0 and e = exp(b d):
#   others, n_at_max as in the exp-sum row state, s1 = sum e d, s2 = sum e d^2,
#   s3 = sum e d^3,
# where terms with e == 0 add 0 (d = -inf: not -inf * 0). Blocks merge in block order
# under the larger max M: with delta = m - M, a block's sums re-expressed relative to M
# are scale (total, s1 + delta total, s2 + 2 delta s1 + delta^2 total, s3 + 3 delta s2 +
# 3 delta^2 s1 + delta^3 total), scale = exp(b delta). Rows are summed in fixed chunks of whole rows, the chunks in order.
# (Sections of other ops may follow; this one ends at its closing rule.)


# weight, nll, slope, curvature, slope as b -> inf, third derivative
TEMPERATURE_SUMS = 6


@vector_jit
def temperature_block_moments(values, b):
    """(max, others, n_at_max, s1, s2, s3) of one block at inverse temperature b."""
    block_max = max_of(values)
    shift = np.float64(shift_for(block_max))
    others = 0.0
    n_at_max = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for j in range(values.shape[0]):
        d = np.float64(values[j]) - shift
        e = shifted_exp(b * d)
        at_max = 1.0 if d == 0.0 else 0.0
        others += e - at_max
        n_at_max += at_max
        kept = e > 0.0
        s1 += e * d if kept else 0.0
        s2 += e * d * d if kept else 0.0
        s3 += e * d * d * d if kept else 0.0
    return np.float64(block_max), others, n_at_max, s1, s2, s3


@plain_jit
def shifted_moments(total, s1, s2, s3, delta, scale):
    """(total, s1, s2, s3) of sums taken relative to a shift, re-expressed relative to a
    shift larger by -delta (delta <= 0), each term scaled by scale = exp(b delta)."""
    return (total * scale, (s1 + delta * total) * scale,
            (s2 + 2.0 * delta * s1 + delta * delta * total) * scale,
            (s3 + 3.0 * delta * s2 + 3.0 * delta * delta * s1
             + delta * delta * delta * total) * scale)


@vector_jit
def temperature_row(row, label, b):
    """(nll, dnll/db, d2nll/db2, M - x[label], d3nll/db3) of one row; NaN when its max is
    not finite."""
    n_classes = row.shape[0]
    row_max = -np.inf
    others = 0.0
    n_at_max = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for block in range(n_blocks_of(n_classes)):
        start, stop = block_bounds(n_classes, block)
        block_max, block_others, block_count, block_s1, block_s2, block_s3 = (
            temperature_block_moments(row[start:stop], b))
        block_total = block_others + block_count
        if block_total == 0.0:  # every class masked (-inf): adds nothing
            continue
        if others + n_at_max == 0.0 or block_max == row_max:
            if others + n_at_max == 0.0:
                row_max = block_max
            others += block_others
            n_at_max += block_count
            s1 += block_s1
            s2 += block_s2
            s3 += block_s3
        elif block_max > row_max:  # the row so far moves under the block's max
            delta = row_max - block_max
            total, s1, s2, s3 = shifted_moments(others + n_at_max, s1, s2, s3, delta,
                                                shifted_exp(b * delta))
            others = total + block_others
            n_at_max = block_count
            s1 += block_s1
            s2 += block_s2
            s3 += block_s3
            row_max = block_max
        else:
            delta = block_max - row_max
            total, moved_s1, moved_s2, moved_s3 = shifted_moments(
                block_total, block_s1, block_s2, block_s3, delta, shifted_exp(b * delta))
            others += total
            s1 += moved_s1
            s2 += moved_s2
            s3 += moved_s3
    if not np.isfinite(row_max) or not np.isfinite(others):
        return np.nan, np.nan, np.nan, np.nan, np.nan
    label_d = np.float64(row[label]) - row_max
    total = others + n_at_max
    mean_d = s1 / total
    variance = max(s2 / total - mean_d * mean_d, 0.0)
    nll = log1p_float64(others + (n_at_max - 1.0)) - b * label_d
    third = s3 / total - 3.0 * mean_d * (s2 / total) + 2.0 * mean_d * mean_d * mean_d
    return nll, mean_d - label_d, variance, -label_d, third


@plain_jit
def temperature_chunk(x, labels, sample_weight, ignore_index, b, rows_per_chunk, chunk,
                      sums):
    """sums[chunk] = (weight, nll, slope, curvature, slope at b -> inf, third derivative)
    of the chunk's kept rows, added in row order."""
    weighted = sample_weight.shape[0] != 0
    total = np.zeros(TEMPERATURE_SUMS)
    for i in range(chunk * rows_per_chunk, min(x.shape[0], (chunk + 1) * rows_per_chunk)):
        label = labels[i]
        w = np.float64(sample_weight[i]) if weighted else 1.0
        if label == ignore_index or w == 0.0:
            continue
        nll, slope, curvature, limit_slope, third = temperature_row(x[i], label, b)
        total[0] += w
        total[1] += w * nll
        total[2] += w * slope
        total[3] += w * curvature
        total[4] += w * limit_slope
        total[5] += w * third
    for k in range(TEMPERATURE_SUMS):
        sums[chunk, k] = total[k]


@plain_jit
def temperature_rows_per_chunk(n_classes):
    return max(1, ROW_SUM_CHUNK_ELEMENTS // max(n_classes, 1))


@plain_jit
def sum_temperature_chunks(sums):
    total = np.zeros(TEMPERATURE_SUMS)
    for chunk in range(sums.shape[0]):
        for k in range(TEMPERATURE_SUMS):
            total[k] += sums[chunk, k]
    return total


def _temperature_nll(x, labels, sample_weight, ignore_index, b):
    rows_per_chunk = temperature_rows_per_chunk(x.shape[1])
    n_chunks = (x.shape[0] + rows_per_chunk - 1) // rows_per_chunk
    sums = np.empty((n_chunks, TEMPERATURE_SUMS))
    for chunk in prange(n_chunks):
        temperature_chunk(x, labels, sample_weight, ignore_index, b, rows_per_chunk, chunk,
                          sums)
    return sum_temperature_chunks(sums)


TEMPERATURE_NLL = chunk_kernels(_temperature_nll)


def temperature_nll(x, labels, sample_weight, ignore_index, inverse_temperature,
                    n_threads=1):
    one_chunk = x.shape[0] <= ROW_SUM_CHUNK_ELEMENTS // max(x.shape[1], 1)
    sums = launch_chunks(usable_threads(n_threads), TEMPERATURE_NLL, one_chunk, x, labels,
                         sample_weight, int(ignore_index), float(inverse_temperature))
    return tuple(float(value) for value in sums)


# ------------------------------------------------- end of the temperature_nll section


# --------------------------------------------------------------------------------------
# thresholds: per-class histograms of logits and the gather of chosen bins
# (logitcore._thresholds; not kernels of the op table)
# --------------------------------------------------------------------------------------
# A bin is a monotone function of the value, computed from the float32 bit pattern (a
# float64 is rounded to float32 first, which keeps the order): |x| in [2^-EXP_RANGE,
# 2^EXP_RANGE) is cut into binades of 2^mantissa_bits bins each, smaller magnitudes share
# one bin per sign, larger ones (and inf) another. -0.0 counts as +0.0 so that equal
# values always share a bin. _thresholds.bin_layout gives (shift, first_level, levels);
# numpy's twin is _thresholds.bins_of. NaN is counted apart (the caller raises).
# The histogram and gather loops take the rows in tiles of about THRESHOLD_TILE_BYTES of a
# class group's logits. The histogram first reads a tile in memory order (which the
# hardware prefetcher streams; the loop counts the NaNs), then both loops go class block
# by class block (one cache line of float32 logits) down the tile's rows: each class's
# histogram takes thousands of a tile's rows per visit (with a thousand classes the
# histograms do not stay in cache from one tile to the next, so taller tiles miss less).
# The gather's two comparisons per element keep up with the strided walk without the
# first read (measured: it only added time).
THRESHOLD_TILE_BYTES = 1 << 25
THRESHOLD_CLASS_BLOCK = 16


@plain_jit
def threshold_tile_rows(n_group_classes, itemsize):
    return max(16, THRESHOLD_TILE_BYTES // max(1, n_group_classes * itemsize))


@vector_jit
def threshold_stream_tile(x, y, tile, tile_end, first_class, end_class):
    """Read the tile's logits and labels in memory order; returns its NaN count."""
    n_nan = 0
    label_sum = 0
    for i in range(tile, tile_end):
        for c in range(first_class, end_class):
            value = x[i, c]
            n_nan += value != value
            label_sum += y[i, c]
    return n_nan + 0 * label_sum


@plain_jit
def threshold_bin(value, shift, first_level, levels):
    bits = float_to_bits(np.float32(value))
    magnitude = bits & 0x7FFFFFFF
    level = (magnitude >> shift) - first_level + 1
    if level < 0:
        level = 0
    elif level > levels - 1:
        level = levels - 1
    if bits < 0 and magnitude != 0:
        return levels - 1 - level
    return levels + level


@njit(parallel=True, cache=True, error_model="numpy")
def threshold_histogram(x, y, w, row_bounds, class_bounds, shift, first_level, levels,
                        counts, weights, nan_counts):
    """counts[r, c, label, bin] (int32; and weights[...] the summed w when w.size) of
    rows row_bounds[r]:row_bounds[r + 1] and the classes of group g; nan_counts[r, c]
    the NaNs. A row chunk has fewer than 2^31 rows (the caller splits)."""
    n_groups = class_bounds.shape[0] - 1
    n_tasks = (row_bounds.shape[0] - 1) * n_groups
    weighted = w.shape[0] > 0
    n_bins = 2 * levels
    n_classes = x.shape[1]
    flat_counts = counts.reshape(counts.size)
    flat_weights = weights.reshape(weights.size)
    for task in prange(n_tasks):
        r = task // n_groups
        g = task - r * n_groups
        tile_rows = threshold_tile_rows(class_bounds[g + 1] - class_bounds[g], x.itemsize)
        for tile in range(row_bounds[r], row_bounds[r + 1], tile_rows):
            tile_end = min(tile + tile_rows, row_bounds[r + 1])
            if threshold_stream_tile(x, y, tile, tile_end, class_bounds[g],
                                     class_bounds[g + 1]) == 0:
                has_nan = False
            else:
                has_nan = True
            for block in range(class_bounds[g], class_bounds[g + 1], THRESHOLD_CLASS_BLOCK):
                block_end = min(block + THRESHOLD_CLASS_BLOCK, class_bounds[g + 1])
                for i in range(tile, tile_end):
                    for c in range(block, block_end):
                        value = x[i, c]
                        if has_nan and value != value:
                            nan_counts[r, c] += 1
                            continue
                        # the (label, bin) cell of class c in chunk r, counts flattened
                        index = ((r * n_classes + c) * 2 + y[i, c]) * n_bins + \
                            threshold_bin(value, shift, first_level, levels)
                        flat_counts[index] += 1
                        if weighted:
                            flat_weights[index] += w[i]


@njit(parallel=True, cache=True, error_model="numpy")
def threshold_gather(x, y, w, row_bounds, class_bounds, lowest, highest, starts,
                     out_values, out_labels, out_weights):
    """Copy the (value, label, weight) of every element of class c with
    lowest[c] <= float32(value) <= highest[c] (float32 bounds: the values of a range of
    bins, _thresholds._value_range; NaN never passes) to the outputs, rows of chunk r
    from position starts[r, c] on, in row order (the rows and classes walked as in
    threshold_histogram). Two comparisons instead of each element's bin."""
    n_groups = class_bounds.shape[0] - 1
    n_tasks = (row_bounds.shape[0] - 1) * n_groups
    weighted = w.shape[0] > 0
    for task in prange(n_tasks):
        r = task // n_groups
        g = task - r * n_groups
        position = starts[r].copy()
        tile_rows = threshold_tile_rows(class_bounds[g + 1] - class_bounds[g], x.itemsize)
        for tile in range(row_bounds[r], row_bounds[r + 1], tile_rows):
            tile_end = min(tile + tile_rows, row_bounds[r + 1])
            for block in range(class_bounds[g], class_bounds[g + 1], THRESHOLD_CLASS_BLOCK):
                block_end = min(block + THRESHOLD_CLASS_BLOCK, class_bounds[g + 1])
                for i in range(tile, tile_end):
                    for c in range(block, block_end):
                        value = x[i, c]
                        rounded = np.float32(value)
                        if rounded >= lowest[c] and rounded <= highest[c]:
                            k = position[c]
                            out_values[k] = value
                            out_labels[k] = y[i, c]
                            if weighted:
                                out_weights[k] = w[i]
                            position[c] = k + 1


# The objective, scalar: metric codes of _thresholds.METRIC_CODES (0 F-beta, 1 balanced
# accuracy, 2 Youden's J, 3 recall at precision >= bound, 4 precision at recall >= bound).
# Same expressions, in the same order, as _thresholds._Objective.values (no fastmath), so
# both backends give the same bits.


@plain_jit
def threshold_precision(tp, fp):
    if tp + fp > 0:
        return tp / (tp + fp)
    return 1.0  # nothing predicted: the curve's point at +inf


@plain_jit
def threshold_metric(metric, tp, fp, positives, negatives, beta2):
    if metric == 0:
        if tp > 0:
            return (1 + beta2) * tp / ((1 + beta2) * tp + beta2 * (positives - tp) + fp)
        return 0.0
    if metric == 1:
        return (tp / positives + (negatives - fp) / negatives) / 2
    if metric == 2:
        return tp / positives - fp / negatives
    if metric == 3:
        return tp / positives
    return threshold_precision(tp, fp)


@plain_jit
def threshold_feasible(metric, tp, fp, positives, bound):
    if metric == 3:
        return threshold_precision(tp, fp) >= bound
    if metric == 4:
        return tp / positives >= bound
    return True


@plain_jit
def threshold_not_worse(metric, tp, fp, best_tp, best_fp, positives, negatives, beta2):
    """Whether (tp, fp) at a lower threshold than (best_tp, best_fp) replaces it: F-beta
    ties go to the lower threshold, balanced accuracy / J ties to the higher; recall ties
    to the higher precision (precision ties to the higher recall), then the lower."""
    if metric == 0:
        return (threshold_metric(0, tp, fp, positives, negatives, beta2)
                >= threshold_metric(0, best_tp, best_fp, positives, negatives, beta2))
    if metric == 1 or metric == 2:  # J * P * N: exact for integer counts
        return tp * negatives - fp * positives > best_tp * negatives - best_fp * positives
    recall, best_recall = tp / positives, best_tp / positives
    precision = threshold_precision(tp, fp)
    best_precision = threshold_precision(best_tp, best_fp)
    if metric == 3:
        return recall > best_recall or (recall == best_recall
                                         and precision >= best_precision)
    return precision > best_precision or (precision == best_precision
                                          and recall >= best_recall)


@njit(parallel=True, cache=True, error_model="numpy")
def threshold_bins_to_resolve(mass, skip, metric, beta2, bound, slack, tp_above, fp_above,
                              keep):
    """Per class (mass[c, label, bin], weights or counts): tp_above / fp_above[c, b] the
    weight in bins >= b, and keep[c, b] for the bins that may hold the optimum (see
    _thresholds.bins_to_resolve, the same rules)."""
    n_classes, _, n_bins = mass.shape
    for c in prange(n_classes):
        tp_above[c, n_bins] = 0.0
        fp_above[c, n_bins] = 0.0
        for b in range(n_bins - 1, -1, -1):
            tp_above[c, b] = tp_above[c, b + 1] + mass[c, 1, b]
            fp_above[c, b] = fp_above[c, b + 1] + mass[c, 0, b]
        keep[c, :] = 0
        if skip[c]:
            continue
        positives, negatives = tp_above[c, 0], fp_above[c, 0]
        # the best value reached at a bin boundary (and at +inf where it counts)
        if metric == 1 or metric == 2:
            best = threshold_metric(metric, 0.0, 0.0, positives, negatives, beta2)
        elif metric == 3:
            best = 0.0
        elif metric == 4:
            best = 1.0 if bound <= 0 else -np.inf
        else:
            best = -np.inf
        for b in range(n_bins):
            if mass[c, 0, b] + mass[c, 1, b] <= 0:
                continue
            tp, fp = tp_above[c, b], fp_above[c, b]
            if not threshold_feasible(metric, tp, fp, positives, bound):
                continue
            if metric == 3:
                value = tp / positives
            else:
                value = threshold_metric(metric, tp, fp, positives, negatives, beta2)
            best = max(best, value)
        for b in range(n_bins):
            if mass[c, 0, b] + mass[c, 1, b] <= 0:
                continue
            tp_high, fp_low = tp_above[c, b], fp_above[c, b + 1]
            if metric <= 2:
                high = threshold_metric(metric, tp_high, fp_low, positives, negatives, beta2)
                keep[c, b] = high >= best - slack * abs(best)
                continue
            recall_high = tp_high / positives
            precision_high = tp_high / (tp_high + fp_low) if tp_high > 0 else 0.0
            if metric == 3:
                keep[c, b] = (precision_high >= bound * (1 - slack)
                              and recall_high >= best * (1 - slack))
            else:
                keep[c, b] = (recall_high >= bound * (1 - slack)
                              and precision_high >= best * (1 - slack))


@njit(parallel=True, cache=True, error_model="numpy")
def threshold_resolve(values, labels, weights, starts, tp_above, fp_above, skip, shift,
                      first_level, levels, metric, beta2, bound, threshold_out, tp_out,
                      fp_out):
    """Per class: the exact scan of the candidates values[starts[c]:starts[c + 1]] (all
    the samples of the kept bins), the counts above a bin from tp_above / fp_above, and
    the best threshold (+inf: predict nothing) with its tp, fp."""
    weighted = weights.shape[0] > 0
    for c in prange(starts.shape[0] - 1):
        positives, negatives = tp_above[c, 0], fp_above[c, 0]
        best_t, best_tp, best_fp = np.inf, 0.0, 0.0
        # F-beta never takes +inf; the others start from it (precision only if allowed)
        have_best = metric != 0 and threshold_feasible(metric, 0.0, 0.0, positives, bound)
        if skip[c]:
            threshold_out[c], tp_out[c], fp_out[c] = np.inf, 0.0, 0.0
            continue
        part = values[starts[c]:starts[c + 1]]
        order = np.argsort(part)[::-1]
        current_bin = -1
        in_bin_tp = in_bin_fp = 0.0
        group_weight = 0.0
        for k in range(order.shape[0]):
            j = starts[c] + order[k]
            value = values[j]
            b = threshold_bin(value, shift, first_level, levels)
            if b != current_bin:
                current_bin, in_bin_tp, in_bin_fp = b, 0.0, 0.0
            weight = weights[j] if weighted else 1.0
            if labels[j]:
                in_bin_tp += weight
            else:
                in_bin_fp += weight
            group_weight += weight
            if k + 1 < order.shape[0] and values[starts[c] + order[k + 1]] == value:
                continue  # the end of a run of equal values is the threshold
            if group_weight == 0:
                continue  # only zero-weight samples: not a threshold
            group_weight = 0.0
            tp = tp_above[c, b + 1] + in_bin_tp
            fp = fp_above[c, b + 1] + in_bin_fp
            if not threshold_feasible(metric, tp, fp, positives, bound):
                continue
            if not have_best or threshold_not_worse(metric, tp, fp, best_tp, best_fp,
                                                    positives, negatives, beta2):
                best_t, best_tp, best_fp, have_best = value, tp, fp, True
        threshold_out[c], tp_out[c], fp_out[c] = best_t, best_tp, best_fp


# --------------------------------------------------------------------------------------
# The math library's primitives on arrays (test hooks, not kernels of the op table)
# --------------------------------------------------------------------------------------
# 1-D float32 or float64 x and out. The cython backend exposes the same three names, so
# tests compare both backends' primitives element by element.


@serial_kernel
def math_exp(x, out):
    """out = exp(x), the kernels' exp in x's type."""
    for j in range(x.shape[0]):
        out[j] = fast_exp(x[j])


@serial_kernel
def math_log(x, out):
    """out = log(x), computed in float64 (as the kernels take the log of a row's sum)."""
    for j in range(x.shape[0]):
        out[j] = cast_like(log_float64(np.float64(x[j])), out)


@serial_kernel
def math_log1p(x, out):
    """out = log1p(x) for x in [-1, inf] or NaN: the kernels' log1p_unit in x's type on
    [0, 1] (softplus), log1p_float64 elsewhere (the log of a row's sum of exps)."""
    for j in range(x.shape[0]):
        value = x[j]
        if value >= 0 and value <= 1:
            out[j] = log1p_unit(value)
        else:
            out[j] = cast_like(log1p_float64(np.float64(value)), out)


# --------------------------------------------------------------------------------------
# The cached machine code and kernel_constants.py
# --------------------------------------------------------------------------------------


def _constants_fingerprint():
    """A hash of every constant of kernel_constants.py, as this process sees them."""
    values = sorted((name, repr(value)) for name, value in vars(kernel_constants).items()
                    if name.isupper())
    return hashlib.sha256(repr(values).encode()).hexdigest()


def _forget_stale_cache():
    """Remove this module's cached machine code if it was compiled with other constants.

    numba's cache index checks only the timestamp of the file holding the jitted function
    (this one), while the sizes and coefficients frozen into the machine code come from
    kernel_constants.py: after an edit there, the old machine code would be loaded as if
    nothing had changed. So the constants' fingerprint is kept beside numba's index, and
    the module's cache files are removed (compiled afresh on first use) when it differs.
    Runs at import, before any kernel is loaded from the cache.
    """
    try:
        # Every cache=True kernel of this module shares one cache directory.
        cache_dir = _logsumexp_split._cache.cache_path
    except AttributeError:  # no on-disk cache (no writable location)
        return
    stamp = os.path.join(cache_dir, __name__.rsplit(".", 1)[-1] + ".constants")
    fingerprint = _constants_fingerprint()
    try:
        with open(stamp) as file:
            if file.read() == fingerprint:
                return
    except OSError:
        pass
    prefix = os.path.basename(__file__).rsplit(".", 1)[0] + "."
    try:
        for name in os.listdir(cache_dir):
            if name.startswith(prefix) and name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache_dir, name))
        os.makedirs(cache_dir, exist_ok=True)
        temporary = f"{stamp}.{os.getpid()}"
        with open(temporary, "w") as file:
            file.write(fingerprint)
        os.replace(temporary, stamp)
    except OSError:  # a read-only cache location: numba does not write there either
        pass


if not numba.config.DISABLE_JIT:
    _forget_stale_cache()
