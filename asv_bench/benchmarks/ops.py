"""Every public op × implementation × dtype × shape: wall time and peak memory.

Implementations are logitcore's backends (``numpy`` reference, ``numba``, ``cython``)
and the peers that have the op (``torch``, ``scipy``, ``jax``, ``sklearn``), each called
the way ``logitcore bench`` calls it. One class per op keeps each dashboard graph to one
op, with a line per implementation / dtype / shape.

``peakmem_`` is the peak resident memory of the whole benchmark process (input data and
imported libraries included), so compare it between implementations and commits, not
with the size of the data.
"""

from .common import DTYPES, SHAPES, impls, make_runner


class _OpBenchmark:
    """Base: subclasses set ``op`` and ``params``."""

    op: str
    param_names = ["impl", "dtype", "shape"]
    timeout = 300  # full-size reference-backend cases take seconds per call
    # setup() already made the first call (JIT compilation, page faults of the
    # output), so asv's own warm-up only has to settle the clock. One process per
    # case with up to 8 samples instead of asv's default 2 processes x 5 samples: the
    # fixed cost per process (fork, data, JIT cache load) dominated a commit's run.
    warmup_time = 0.03
    rounds = 1
    repeat = (3, 8, 3.0)

    def setup(self, impl, dtype, shape):
        self.call = make_runner(self.op, impl, dtype, shape)

    def time_op(self, impl, dtype, shape):
        self.call()

    def peakmem_op(self, impl, dtype, shape):
        self.call()


def _params(op):
    return [impls(op), DTYPES, SHAPES]


class Logsumexp(_OpBenchmark):
    op = "logsumexp"
    params = _params(op)


class Softmax(_OpBenchmark):
    op = "softmax"
    params = _params(op)


class LogSoftmax(_OpBenchmark):
    op = "log_softmax"
    params = _params(op)


class Sigmoid(_OpBenchmark):
    op = "sigmoid"
    params = _params(op)


class CrossEntropyMean(_OpBenchmark):
    """cross_entropy(logits, labels), reduction="mean"."""

    op = "cross_entropy"
    params = _params(op)


class CrossEntropyNone(_OpBenchmark):
    """cross_entropy(logits, labels, reduction="none"): one loss per row."""

    op = "cross_entropy_none"
    params = _params(op)


class CrossEntropyGrad(_OpBenchmark):
    """cross_entropy(..., return_grad=True): mean loss and its gradient in one pass
    (torch: forward + backward; scikit-learn: per-row loss + gradient)."""

    op = "cross_entropy_grad"
    params = _params(op)


class BinaryCrossEntropyWithLogits(_OpBenchmark):
    """binary_cross_entropy_with_logits(logits, targets), reduction="mean"."""

    op = "bce_with_logits"
    params = _params(op)


class SoftmaxBackward(_OpBenchmark):
    """softmax_backward(dy, y): the vector-Jacobian product of softmax."""

    op = "softmax_backward"
    params = _params(op)


class Score(_OpBenchmark):
    """score(logits, labels, top_k=5): every per-row figure (torch and SciPy: the usual
    chain of log_softmax, exp, max, top-k, entropy and the label's log-probability)."""

    op = "score"
    params = _params(op)


class FitTemperature(_OpBenchmark):
    """fit_temperature(logits, labels) on an over-confident classifier's logits (torch:
    Guo et al.'s LBFGS recipe; sklearn: _TemperatureScaling, behind
    CalibratedClassifierCV(method="temperature"); scipy: minimize_scalar on the NLL)."""

    op = "fit_temperature"
    params = _params(op)


class CalibrationError(_OpBenchmark):
    """calibration_error(logits, labels): top-label ECE, 15 bins (torchmetrics'
    multiclass_calibration_error)."""

    op = "calibration_error"
    params = _params(op)


class CalibrationErrorOfScores(_OpBenchmark):
    """calibration_error(scores) of an earlier score(): the binning alone (the same for
    every backend), against torchmetrics from the logits."""

    op = "calibration_error_scores"
    params = _params(op)
