"""logitcore.entropy: the Shannon entropy of softmax(x), against SciPy and PyTorch.

The shapes take each schedule a backend has for the op: (7, 1000) whole rows, (1, 131072)
one long row (the class split where a backend has it for the op), (4099, 10) narrow rows.
"""

import numpy as np
import pytest
import scipy.special
import scipy.stats

import logitcore
from conftest import tolerance

SHAPES = [(7, 1000), (1, 131072), (4099, 10)]
DTYPES = [np.float32, np.float64]


def scipy_entropy(x):
    """-sum p log p of p = softmax(x) along the last axis, in float64, by SciPy."""
    x64 = np.asarray(x, np.float64)
    return scipy.stats.entropy(scipy.special.softmax(x64, axis=-1), axis=-1)


def logits(rng, shape, dtype):
    """Spread-out logits with some classes masked to -inf (probability exactly 0)."""
    x = rng.standard_normal(shape) * 4.0
    x[rng.random(shape) < 0.1] = -np.inf
    x[:, 0] = rng.standard_normal(shape[0])  # every row keeps a finite class
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_scipy(backend, shape, dtype, rng):
    x = logits(rng, shape, dtype)
    result = logitcore.entropy(x, backend=backend)
    assert result.dtype == dtype and result.shape == shape[:1]
    np.testing.assert_allclose(result, scipy_entropy(x), **tolerance(dtype))
    assert logitcore.last_dispatch()["kernel"] == "entropy"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_torch(backend, shape, dtype, rng):
    torch = pytest.importorskip("torch")
    x = logits(rng, shape, dtype)
    expected = torch.distributions.Categorical(
        logits=torch.from_numpy(x.astype(np.float64))).entropy().numpy()
    np.testing.assert_allclose(logitcore.entropy(x, backend=backend), expected,
                               **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [10, 1000, 9000])
def test_edge_rows(backend, n_classes, dtype):
    """NaN, +inf and all -inf rows have no softmax: NaN. Masked classes add 0, not
    (-inf) * 0 = NaN; a row whose mass is on one class has entropy 0."""
    x = np.zeros((6, n_classes), dtype)
    x[0, 3] = np.nan
    x[1, 3] = np.inf
    x[2] = -np.inf
    x[3, 1:] = -np.inf                 # one class left: 0
    x[4, n_classes // 2:] = -np.inf    # uniform over the first half
    x[5] = np.arange(n_classes) * -1.0
    result = logitcore.entropy(x, backend=backend)
    assert np.isnan(result[:3]).all()
    assert result[3] == 0.0
    np.testing.assert_allclose(result[3:], scipy_entropy(x[3:]), **tolerance(dtype))
    np.testing.assert_allclose(result[4], np.log(n_classes // 2), **tolerance(dtype))


def test_one_class_is_zero_and_empty_is_nan(backend):
    assert (logitcore.entropy(np.array([[3.0], [-1e300]]), backend=backend) == 0.0).all()
    assert np.isnan(logitcore.entropy(np.empty((2, 0)), backend=backend)).all()
    assert logitcore.entropy(np.empty((0, 5)), backend=backend).shape == (0,)


def test_axis_out_and_scalar(rng):
    x = rng.standard_normal((3, 4, 5))
    np.testing.assert_allclose(logitcore.entropy(x, axis=1),
                               scipy_entropy(np.moveaxis(x, 1, -1)), rtol=1e-13)
    np.testing.assert_allclose(logitcore.entropy(x, axis=(1, 2)),
                               scipy_entropy(x.reshape(3, 20)), rtol=1e-13)
    out = np.empty(3)
    assert logitcore.entropy(x[:, 0], out=out) is out
    np.testing.assert_allclose(out, scipy_entropy(x[:, 0]), rtol=1e-13)
    assert logitcore.entropy(2.0) == 0.0


def test_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="x"):
        logitcore.entropy(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="out"):
        logitcore.entropy(np.zeros((2, 3)), out=np.empty(3))
