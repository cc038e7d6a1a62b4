"""temperature= on logsumexp, softmax, log_softmax, cross_entropy and
binary_cross_entropy_with_logits: every backend computes the op on x / T (T a scalar or
one per row) on every schedule's shapes, against PyTorch on x / T in float64, and the
gradients against torch autograd with respect to the unscaled logits."""

import numpy as np
import pytest

import logitcore
from conftest import NUMBA_PYTHON_MODE

torch = pytest.importorskip("torch")

# wide rows (rows schedule), few long rows (class split on 2+ threads), narrow rows
# (row tiles), and a 3-D input whose rows are the two leading axes.
SHAPES = {"wide": (40, 1000), "class_split": (3, 20000), "narrow": (300, 10),
          "three_d": (4, 5, 300)}
if NUMBA_PYTHON_MODE:  # kernels run as Python: the smallest shapes taking the same paths
    SHAPES = {"wide": (6, 100), "class_split": (2, 4200), "narrow": (60, 10),
              "three_d": (2, 3, 40)}
DTYPES = [np.float32, np.float64]


def _tolerance(dtype):
    if np.dtype(dtype) == np.float64:
        return dict(rtol=1e-11, atol=1e-11)
    return dict(rtol=2e-5, atol=2e-5)


def _problem(shape, dtype, per_row, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x[..., 3] = -np.inf  # a masked class
    temperature = rng.uniform(0.25, 4.0, shape[:-1]) if per_row else 2.5
    return x, temperature


def _torch_scaled(x, temperature, requires_grad=False):
    """(unscaled logits as a float64 leaf tensor, logits / T)"""
    leaf = torch.tensor(np.asarray(x, np.float64), requires_grad=requires_grad)
    t = torch.tensor(np.asarray(temperature, np.float64))
    return leaf, leaf / (t[..., None] if t.ndim else t)


@pytest.fixture(autouse=True)
def two_threads():
    # the class split needs more than one thread
    with logitcore.config(n_threads=2):
        yield


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_T", "row_T"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
def test_softmax_family_computes_on_logits_over_t(backend, op, shape, dtype, per_row):
    x, temperature = _problem(shape, dtype, per_row)
    got = getattr(logitcore, op)(x, temperature=temperature, backend=backend)
    _, scaled = _torch_scaled(x, temperature)
    want = getattr(torch, op)(scaled, dim=-1).numpy()
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("op", ["logsumexp", "softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [SHAPES["wide"], SHAPES["class_split"], SHAPES["narrow"]],
                         ids=["wide", "class_split", "narrow"])
def test_float16_input_is_widened_and_scaled(backend, op, shape):
    x, temperature = _problem(shape, np.float16, per_row=True)
    got = getattr(logitcore, op)(x, temperature=temperature, backend=backend)
    _, scaled = _torch_scaled(x.astype(np.float64), temperature)
    want = getattr(torch, op)(scaled, dim=-1).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, **_tolerance(np.float32))


def _torch_cross_entropy(x, labels, temperature, label_smoothing, ignore_index):
    """torch's loss of x / T (class axis last) and its gradient w.r.t. x."""
    leaf, scaled = _torch_scaled(x, temperature, requires_grad=True)
    logits = scaled.reshape(-1, x.shape[-1])
    loss = torch.nn.functional.cross_entropy(
        logits, torch.tensor(labels.reshape(-1)), ignore_index=ignore_index,
        label_smoothing=label_smoothing)
    loss.backward()
    return loss.item(), leaf.grad.numpy()


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_T", "row_T"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_labels_and_gradient(backend, shape, dtype, per_row, label_smoothing):
    x, temperature = _problem(shape, dtype, per_row)
    rng = np.random.default_rng(1)
    labels = rng.integers(4, shape[-1], shape[:-1])  # never the masked class 3
    labels.reshape(-1)[::5] = -1  # ignore_index rows
    loss, grad = logitcore.cross_entropy(
        x, labels, ignore_index=-1, label_smoothing=label_smoothing, return_grad=True,
        temperature=temperature, backend=backend)
    want_loss, want_grad = _torch_cross_entropy(x, labels, temperature, label_smoothing, -1)
    np.testing.assert_allclose(loss, want_loss, **_tolerance(dtype))
    np.testing.assert_allclose(grad, want_grad, **_tolerance(dtype))


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_T", "row_T"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [SHAPES["wide"], SHAPES["narrow"], SHAPES["three_d"]],
                         ids=["wide", "narrow", "three_d"])
def test_cross_entropy_probabilities_and_gradient(backend, shape, dtype, per_row):
    x, temperature = _problem(shape, dtype, per_row)
    x[..., 3] = 0.0  # a probability target puts mass on every class
    rng = np.random.default_rng(2)
    target = rng.dirichlet(np.ones(shape[-1]), shape[:-1]).astype(dtype)
    loss, grad = logitcore.cross_entropy(x, target, reduction="sum", return_grad=True,
                                         temperature=temperature, backend=backend)
    leaf, scaled = _torch_scaled(x, temperature, requires_grad=True)
    want = -(torch.tensor(target.astype(np.float64)) * torch.log_softmax(scaled, -1)).sum()
    want.backward()
    np.testing.assert_allclose(loss, want.item(), **_tolerance(dtype))
    np.testing.assert_allclose(grad, leaf.grad.numpy(), **_tolerance(dtype))


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_T", "row_T"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_binary_cross_entropy_and_gradient(backend, shape, dtype, per_row):
    x, temperature = _problem(shape, dtype, per_row)
    x[..., 3] = 1.5
    rng = np.random.default_rng(3)
    target = rng.uniform(0.0, 1.0, shape).astype(dtype)
    pos_weight = rng.uniform(0.5, 2.0, shape[-1]).astype(dtype)
    loss, grad = logitcore.binary_cross_entropy_with_logits(
        x, target, pos_weight=pos_weight, return_grad=True, temperature=temperature,
        backend=backend)
    leaf, scaled = _torch_scaled(x, temperature, requires_grad=True)
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        scaled, torch.tensor(target.astype(np.float64)),
        pos_weight=torch.tensor(pos_weight.astype(np.float64)))
    want.backward()
    np.testing.assert_allclose(loss, want.item(), **_tolerance(dtype))
    np.testing.assert_allclose(grad, leaf.grad.numpy(), **_tolerance(dtype))


@pytest.mark.parametrize("shape", [SHAPES["wide"], SHAPES["class_split"], SHAPES["narrow"]],
                         ids=["wide", "class_split", "narrow"])
def test_cross_entropy_float16_logits(backend, shape):
    x, temperature = _problem(shape, np.float16, per_row=True)
    labels = np.random.default_rng(4).integers(4, shape[-1], shape[:-1])
    loss, grad = logitcore.cross_entropy(x, labels, return_grad=True,
                                         temperature=temperature, backend=backend)
    want_loss, want_grad = _torch_cross_entropy(x.astype(np.float64), labels, temperature,
                                                0.0, -100)
    np.testing.assert_allclose(loss, want_loss, **_tolerance(np.float32))
    np.testing.assert_allclose(grad, want_grad, **_tolerance(np.float32))


def test_in_place_softmax_with_temperature(backend):
    x, temperature = _problem(SHAPES["wide"], np.float32, per_row=True)
    _, scaled = _torch_scaled(x, temperature)
    want = torch.softmax(scaled, -1).numpy()
    logitcore.softmax(x, out=x, temperature=temperature, backend=backend)
    np.testing.assert_allclose(x, want, **_tolerance(np.float32))


def test_reduced_axes_take_one_temperature_per_kept_row(backend):
    # logsumexp over axes (1, 2) of a (3, 4, 5) array: rows are the 3 entries of axis 0
    x = np.random.default_rng(5).standard_normal((3, 4, 5))
    temperature = np.array([0.5, 1.0, 3.0])
    got = logitcore.logsumexp(x, axis=(1, 2), temperature=temperature, backend=backend)
    want = torch.logsumexp(torch.tensor(x).reshape(3, -1) / torch.tensor(temperature)[:, None],
                           -1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


BAD_TEMPERATURES = {"zero": 0.0, "negative": -1.0, "nan": np.nan, "inf": np.inf,
                    "one_bad_row": np.array([1.0, 0.0, 2.0, 1.0]),
                    "wrong_shape": np.ones(5), "class_shape": np.ones((4, 6))}


@pytest.mark.parametrize("temperature", list(BAD_TEMPERATURES.values()),
                         ids=list(BAD_TEMPERATURES))
@pytest.mark.parametrize("call", [
    lambda x, t: logitcore.logsumexp(x, temperature=t),
    lambda x, t: logitcore.softmax(x, temperature=t),
    lambda x, t: logitcore.log_softmax(x, temperature=t),
    lambda x, t: logitcore.cross_entropy(x, np.zeros(4, np.int64), temperature=t),
    lambda x, t: logitcore.binary_cross_entropy_with_logits(x, np.zeros_like(x),
                                                            temperature=t),
], ids=["logsumexp", "softmax", "log_softmax", "cross_entropy", "bce"])
def test_bad_temperature_raises_naming_it(call, temperature):
    x = np.zeros((4, 6))
    with pytest.raises(ValueError, match="temperature"):
        call(x, temperature)


def test_temperature_none_is_the_untempered_call(backend):
    x, _ = _problem(SHAPES["wide"], np.float32, per_row=False)
    np.testing.assert_array_equal(logitcore.softmax(x, temperature=None, backend=backend),
                                  logitcore.softmax(x, backend=backend))
