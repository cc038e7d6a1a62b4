"""The numbers both compiled backends must agree on, written once.

The numba backend imports this module; the build turns it into the C header
``lc_constants.h`` for the cython backend (setup.py reads the assignments below with
``ast``, so this file holds plain literal assignments only: no imports, no expressions
other than literals). Change a number here and both backends follow.

Sizes decide how work is cut, and so how sums are rounded: a backend whose cuts follow
them gives the same bits for any thread count. Coefficients are the math library's
(docs/architecture.md, "One math library"): exp is Cody-Waite range reduction, a
polynomial and a two-factor 2^k scale (so subnormal results are kept, not flushed);
log is fdlibm's log1p polynomial on the reduced mantissa.
"""

# --- how rows are cut ---------------------------------------------------------------

# Classes per block: a long row is read in blocks of this many classes (the block is
# still in L1 for the passes after the first), and the class split hands whole blocks
# to threads and merges their row states in block order.
BLOCK_CLASSES = 2048
# Rows with fewer classes than this take the narrow schedule: tiles of rows transposed
# so that the SIMD lanes run across rows.
NARROW_MAX_CLASSES = 64
# Elements per tile of narrow rows (it and its scratch stay in L1).
ROW_TILE_ELEMENTS = 2048
# Labels per chunk of the label scan: the float64 sum of the kept weights is taken per
# chunk, then over chunks in order, whatever the thread count.
LABEL_CHUNK = 16384
# Elements per chunk of a sum over rows (temperature_nll): as many whole rows as make
# this many elements, at least one; each chunk is summed in row order, then the chunks in
# chunk order, so the float64 totals do not depend on the thread count.
ROW_SUM_CHUNK_ELEMENTS = 65536
# A call under this many elements runs on the calling thread (waking a pool costs more
# than the work); logitcore's "auto" sends such calls to the backend that is fastest there.
SMALL_CALL_ELEMENTS = 32768

# --- exp ------------------------------------------------------------------------------

LOG2E = 1.4426950408889634074
# 1.5 * 2^23 and 1.5 * 2^52: adding one rounds to an integer held in the low mantissa bits.
ROUND_MAGIC_F32 = 12582912.0
ROUND_MAGIC_F64 = 6755399441055744.0
# ln 2 split in a part with few mantissa bits (k * hi is exact) and the rest.
LN2_HI_F32 = 0.693359375
LN2_LO_F32 = -2.12194440e-4
LN2_HI_F64 = 6.93147180369123816490e-01
LN2_LO_F64 = 1.90821492927058770002e-10
# Clamp bounds: below the low one the result underflows to 0 through the arithmetic, above
# the high one it overflows to inf; inside, k stays where the two-factor scale works.
EXP_LOWEST_F32 = -104.0
EXP_HIGHEST_F32 = 89.0
EXP_LOWEST_F64 = -746.0
EXP_HIGHEST_F64 = 710.0
# exp(r) = 1 + r + r^2 P(r) on |r| <= ln2/2; P's coefficients, highest degree first.
# float32: cephes expf. float64: Taylor 1/n!, n = 13 .. 2 (truncation < 1e-17).
EXP_POLY_F32 = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                1.6666665459e-1, 5.0000001201e-1)
EXP_POLY_F64 = (1.6059043836821614599e-10, 2.0876756987868098979e-09,
                2.5052108385441718775e-08, 2.7557319223985890653e-07,
                2.7557319223985890653e-06, 2.4801587301587301587e-05,
                1.9841269841269841270e-04, 1.3888888888888888889e-03,
                8.3333333333333333333e-03, 4.1666666666666666667e-02,
                1.6666666666666666667e-01, 0.5)

# --- log ------------------------------------------------------------------------------

SQRT2 = 1.4142135623730951
# fdlibm: log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f), for 1 + f in
# [sqrt(1/2), sqrt(2)); R's coefficients, highest degree first.
LOG1P_POLY_F32 = (2.4279078841e-01, 2.8498786688e-01, 4.0000972152e-01, 6.6666662693e-01)
LOG1P_POLY_F64 = (1.479819860511658591e-01, 1.531383769920937332e-01,
                  1.818357216161805012e-01, 2.222219843214978396e-01,
                  2.857142874366239149e-01, 3.999999999940941908e-01,
                  6.666666666666735130e-01)
# ln 2 split for float32 results of log (k * hi exact for the exponents a float32 has).
LN2_HI_LOG_F32 = 6.9313812256e-01
LN2_LO_LOG_F32 = 9.0580006145e-06
