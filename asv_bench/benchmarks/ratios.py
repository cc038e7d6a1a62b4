"""How many times faster than PyTorch CPU logitcore is on the headline cases, tracked
commit by commit so the dashboard plots the ratio itself (> 1: logitcore is faster).

Both sides run in the same process on the same float32 data, interleaved, so machine
load that comes and goes hits both; the value is the median of the paired ratios.
"""

import statistics
import time

from .common import CLASSIFIER_SHAPES, COMPILED_BACKENDS, make_runner

SAMPLE_SECONDS = 0.02  # one timed sample: enough calls to last about this long
PAIRS = 9


def _seconds_per_call(func, number):
    start = time.perf_counter()
    for _ in range(number):
        func()
    return (time.perf_counter() - start) / number


def _calls_per_sample(func):
    return max(1, int(SAMPLE_SECONDS / max(_seconds_per_call(func, 1), 1e-9)))


def paired_speed_ratio(reference, candidate, pairs=PAIRS):
    """Median over interleaved samples of reference time / candidate time."""
    reference_number = _calls_per_sample(reference)
    candidate_number = _calls_per_sample(candidate)
    ratios = []
    for _ in range(pairs):
        ratios.append(_seconds_per_call(reference, reference_number)
                      / _seconds_per_call(candidate, candidate_number))
    return statistics.median(ratios)


class SpeedupOverTorch:
    """torch time / logitcore time, float32, classifier batch (1000 classes)."""

    params = [["logsumexp", "softmax", "cross_entropy"], COMPILED_BACKENDS,
              CLASSIFIER_SHAPES]
    param_names = ["op", "backend", "shape"]
    unit = "torch time / logitcore time"
    timeout = 300

    def setup(self, op, backend, shape):
        self.logitcore_call = make_runner(op, backend, "float32", shape)
        self.torch_call = make_runner(op, "torch", "float32", shape)

    def track_speedup_over_torch(self, op, backend, shape):
        return paired_speed_ratio(self.torch_call, self.logitcore_call)


class CalibrationSpeedup:
    """Peer time / logitcore time for the calibration targets, float32, classifier batch:
    fit_temperature against scikit-learn's _TemperatureScaling, calibration_error against
    torchmetrics' multiclass_calibration_error."""

    params = [["fit_temperature", "calibration_error"], COMPILED_BACKENDS, CLASSIFIER_SHAPES]
    param_names = ["op", "backend", "shape"]
    unit = "peer time / logitcore time"
    timeout = 600
    PEER = {"fit_temperature": "sklearn", "calibration_error": "torchmetrics"}

    def setup(self, op, backend, shape):
        self.peer_call = make_runner(op, self.PEER[op], "float32", shape)
        self.logitcore_call = make_runner(op, backend, "float32", shape)

    def track_speedup_over_peer(self, op, backend, shape):
        return paired_speed_ratio(self.peer_call, self.logitcore_call, pairs=3)
