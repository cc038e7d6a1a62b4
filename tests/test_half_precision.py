"""Half-precision input (float16, and bfloat16 from the optional ml_dtypes): the compiled
kernels read it in 16 bits and widen it to float32 themselves, on every schedule; results
are float32 (the dtype policy in logitcore/_validate.py).

References are independent of logitcore: NumPy's / ml_dtypes' own conversion to float32
for the widening, PyTorch computing in float32 on the same widened values for the ops.
Bit-identity across thread counts is in test_thread_invariance.py (it runs the half dtypes
too)."""

import numpy as np
import pytest
import scipy.special

import logitcore as lc
from conftest import NUMBA_PYTHON_MODE
from logitcore._backends import load

HALF_DTYPES = [np.dtype(np.float16)]
try:
    import ml_dtypes

    HALF_DTYPES.append(np.dtype(ml_dtypes.bfloat16))
except ImportError:  # an optional dependency: bfloat16 is tested where it is installed
    pass

# Shapes that take each schedule (with 3 threads): whole rows, the class split of few
# long rows, narrow rows. The flat schedule: sigmoid and log_sigmoid on any of them.
SHAPES = [(7, 1000), (2, 9000), (300, 10)]
if NUMBA_PYTHON_MODE:
    SHAPES = [(7, 100), (2, 4200), (60, 10)]


def half_ids(dtype):
    return np.dtype(dtype).name


def widened(x):
    """The float32 values of half x, by NumPy's / ml_dtypes' own conversion."""
    return x.astype(np.float32)


def _logits(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x[:, 3] = -np.inf  # a masked class
    x[0, :] = x[0, 5]  # a row of ties
    return x


# --- the widening itself: every bit pattern ---------------------------------------------

@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=half_ids)
@pytest.mark.parametrize("n_classes", [1, 64], ids=["narrow", "rows"])
def test_every_bit_pattern_is_widened_exactly(compiled_backend, dtype, n_classes):
    """logsumexp of a row holding one value and -inf elsewhere is that value (max +
    log1p(0)), so it shows the widened value of each of the 65536 patterns: subnormals,
    0, +-inf and NaN included, on the narrow schedule (one class) and the rows one."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    if NUMBA_PYTHON_MODE:
        bits = bits[::97]
    values = bits.view(dtype)
    x = np.full((bits.size, n_classes), -np.inf, dtype)
    x[:, n_classes // 2] = values
    got = lc.logsumexp(x, backend=compiled_backend)
    assert got.dtype == np.float32
    want = widened(values)
    # bits compared, but for NaN (any NaN) and -0 (logsumexp([-0.0]) is -0 + log1p(0) = 0)
    exact = ~np.isnan(want) & (want != 0)
    np.testing.assert_array_equal(got[exact].view(np.uint32), want[exact].view(np.uint32))
    assert (got[want == 0] == 0).all()
    assert np.isnan(got[np.isnan(want)]).all()


# --- every op against PyTorch -----------------------------------------------------------

def _torch_ops(torch):
    F = torch.nn.functional

    def ce_labels(x, labels):
        leaf = x.clone().requires_grad_()
        loss = F.cross_entropy(leaf, labels, label_smoothing=0.1)
        loss.backward()
        return loss.detach(), leaf.grad

    def ce_probs(x, target):
        leaf = x.clone().requires_grad_()
        loss = F.cross_entropy(leaf, target)
        loss.backward()
        return loss.detach(), leaf.grad

    def bce(x, target):
        leaf = x.clone().requires_grad_()
        loss = F.binary_cross_entropy_with_logits(leaf, target)
        loss.backward()
        return loss.detach(), leaf.grad

    return ce_labels, ce_probs, bce


def _torch(torch, x):
    """torch tensor of the float32 values of half x (torch then computes in float32)."""
    return torch.from_numpy(widened(x))


def _close(got, want, *, rtol=2e-5, atol=2e-6):
    got = np.asarray(got)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(want, dtype=np.float64), rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=half_ids)
def test_ops_match_torch(backend, dtype, shape, rng):
    torch = pytest.importorskip("torch")
    x = _logits(rng, shape, dtype)
    tx = _torch(torch, x)
    with lc.config(n_threads=3):  # few long rows then take the class split
        _close(lc.logsumexp(x, backend=backend), torch.logsumexp(tx, -1))
        _close(lc.softmax(x, backend=backend), torch.softmax(tx, -1))
        _close(lc.log_softmax(x, backend=backend), torch.log_softmax(tx, -1))
        _close(lc.entropy(x, backend=backend),
               torch.distributions.Categorical(logits=tx).entropy(), rtol=1e-4, atol=1e-5)
        _close(lc.sigmoid(x, backend=backend), torch.sigmoid(tx))
        _close(lc.log_sigmoid(x, backend=backend), torch.nn.functional.logsigmoid(tx))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=half_ids)
def test_losses_and_gradients_match_torch(backend, dtype, shape, rng):
    torch = pytest.importorskip("torch")
    ce_labels, ce_probs, bce = _torch_ops(torch)
    x = _logits(rng, shape, dtype)
    x[:, 3] = 0.0  # no masked class: torch's smoothed loss of a -inf logit is inf
    tx = _torch(torch, x)
    labels = rng.integers(0, shape[1], shape[0])
    target = rng.uniform(0.0, 1.0, shape).astype(dtype)
    target_t = _torch(torch, target)
    with lc.config(n_threads=3):
        loss, grad = lc.cross_entropy(x, labels, label_smoothing=0.1, return_grad=True,
                                      backend=backend)
        want_loss, want_grad = ce_labels(tx, torch.from_numpy(labels))
        _close(loss, want_loss, rtol=1e-5)
        _close(grad, want_grad, rtol=1e-4, atol=1e-5)
        loss, grad = lc.cross_entropy(x, target, return_grad=True, backend=backend)
        want_loss, want_grad = ce_probs(tx, target_t)
        _close(loss, want_loss, rtol=1e-5)
        _close(grad, want_grad, rtol=1e-4, atol=1e-5)
        loss, grad = lc.binary_cross_entropy_with_logits(x, target, return_grad=True,
                                                         backend=backend)
        want_loss, want_grad = bce(tx, target_t)
        _close(loss, want_loss, rtol=1e-5)
        _close(grad, want_grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=half_ids)
def test_logsumexp_with_b_and_backward_passes_match_torch(backend, dtype, rng):
    torch = pytest.importorskip("torch")
    shape = SHAPES[0]
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    b = rng.uniform(0.1, 2.0, shape).astype(dtype)
    tx, tb = _torch(torch, x).double(), _torch(torch, b).double()
    _close(lc.logsumexp(x, b=b, backend=backend), torch.logsumexp(tx + torch.log(tb), -1))
    y = lc.softmax(x, backend="numpy").astype(dtype)
    dy = (rng.standard_normal(shape)).astype(dtype)
    ty, tdy = _torch(torch, y).double(), _torch(torch, dy).double()
    _close(lc.softmax_backward(dy, y, backend=backend),
           ty * (tdy - (tdy * ty).sum(-1, keepdim=True)), rtol=1e-5, atol=1e-7)
    log_y = lc.log_softmax(x, backend="numpy").astype(dtype)
    tly = _torch(torch, log_y).double()
    _close(lc.log_softmax_backward(dy, log_y, backend=backend),
           tdy - torch.exp(tly) * tdy.sum(-1, keepdim=True), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES + [(1, 5000)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=half_ids)
def test_half_input_gives_the_bits_of_its_float32_values(compiled_backend, dtype, shape, rng):
    """Widened exactly and computed as float32: the same bits as the float32 call on the
    widened values, on every schedule (the float32 path is itself tested against torch)."""
    x = _logits(rng, shape, dtype)
    x32 = widened(x)
    labels = rng.integers(0, shape[1], shape[0])
    with lc.config(n_threads=2):
        for op in (lc.logsumexp, lc.softmax, lc.log_softmax, lc.entropy, lc.sigmoid):
            np.testing.assert_array_equal(op(x, backend=compiled_backend),
                                          op(x32, backend=compiled_backend), err_msg=op.__name__)
        half_loss, half_grad = lc.cross_entropy(x, labels, label_smoothing=0.1,
                                                return_grad=True, backend=compiled_backend)
        loss, grad = lc.cross_entropy(x32, labels, label_smoothing=0.1, return_grad=True,
                                      backend=compiled_backend)
        np.testing.assert_array_equal(half_grad, grad)
        assert half_loss.tobytes() == loss.tobytes()


# --- the dtype policy --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=half_ids)
def test_kernels_receive_the_16_bit_array(compiled_backend, dtype, monkeypatch):
    """Half input reaches the kernel as it is, not converted to float32 first."""
    module = load(compiled_backend)
    seen = []
    for kernel in ("logsumexp", "softmax", "sigmoid", "cross_entropy_probs"):
        original = getattr(module, kernel)

        def spy(*args, _original=original):
            seen.append(args[0].dtype)
            return _original(*args)

        monkeypatch.setattr(module, kernel, spy)
    x = np.zeros((4, 3), dtype)
    lc.logsumexp(x, backend=compiled_backend)
    lc.softmax(x, backend=compiled_backend)
    lc.sigmoid(x, backend=compiled_backend)
    lc.cross_entropy(x, np.full((4, 3), 1 / 3, dtype), backend=compiled_backend)
    assert seen == [dtype] * 4


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=half_ids)
def test_outputs_are_float32(backend, dtype):
    x = np.array([[0.0, 1.0, 2.0]], dtype)
    assert lc.logsumexp(x, backend=backend).dtype == np.float32
    assert lc.softmax(x, backend=backend).dtype == np.float32
    assert lc.cross_entropy(x, np.array([1]), backend=backend).dtype == np.float32
    out = np.empty((1, 3), np.float32)
    assert lc.softmax(x, out=out, backend=backend) is out
    with pytest.raises(TypeError, match="out must have dtype float32"):
        lc.softmax(x, out=np.empty((1, 3), dtype), backend=backend)


def test_byte_swapped_float16_is_converted(backend):
    x = np.array([[0.0, 1.0, -np.inf]], ">f2")
    np.testing.assert_array_equal(lc.softmax(x, backend=backend),
                                  lc.softmax(x.astype(np.float32), backend=backend))


def test_a_float16_scale_in_a_float32_call(backend, rng):
    x = rng.standard_normal((5, 300)).astype(np.float32)
    b = rng.uniform(0.5, 2.0, (5, 300)).astype(np.float16)
    got = lc.logsumexp(x, b=b, backend=backend)
    assert got.dtype == np.float32
    want = scipy.special.logsumexp(x.astype(np.float64), b=b.astype(np.float64), axis=-1)
    np.testing.assert_allclose(got, want, rtol=2e-6)
