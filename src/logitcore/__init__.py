"""logitcore: fast, trusted CPU kernels for logits.

Log-sum-exp, softmax, log-softmax, sigmoid, cross-entropy and binary cross-entropy with
their gradients, multithreaded over rows, with a float64 NumPy reference backend and
compiled Numba and Cython/OpenMP backends chosen per call.
"""

from ._config import config, get_backend, get_num_threads, set_backend, set_num_threads
from ._info import backend_info, show_config
from ._ops import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    entropy,
    last_dispatch,
    log_sigmoid,
    log_softmax,
    log_softmax_backward,
    logsumexp,
    sigmoid,
    softmax,
    softmax_backward,
)
from ._calibration import (
    CalibrationBins,
    TemperatureFit,
    calibration_error,
    fit_temperature,
    reliability,
    reliability_diagram,
)
from ._score import Scores, Summary, score
from ._thresholds import (
    ThresholdHistogram,
    Thresholds,
    average_precision,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    tune_thresholds,
)

__version__ = "0.1.0"

__all__ = [
    "average_precision",
    "backend_info",
    "binary_cross_entropy_with_logits",
    "calibration_error",
    "CalibrationBins",
    "config",
    "cross_entropy",
    "entropy",
    "fit_temperature",
    "get_backend",
    "get_num_threads",
    "last_dispatch",
    "log_sigmoid",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "precision_recall_curve",
    "reliability",
    "reliability_diagram",
    "roc_auc",
    "roc_curve",
    "score",
    "Scores",
    "set_backend",
    "set_num_threads",
    "show_config",
    "sigmoid",
    "softmax",
    "softmax_backward",
    "Summary",
    "TemperatureFit",
    "ThresholdHistogram",
    "Thresholds",
    "tune_thresholds",
]
