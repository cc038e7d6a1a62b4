"""Bad input gets a clear exception that names the argument, on every backend.

The cases run in a child process, one per backend, so that a segfault or an abort in a
kernel fails the test instead of killing the test run. Each case is a line of code, the
exception type it must raise and a regular expression its message must match.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

X = "np.zeros((4, 3))"
LABELS = "np.array([0, 1, 2, 0])"
BUFFER = "np.zeros((5, 3))"

# (id, code, exception, message regex). ``b`` is the backend under test.
CASES = [
    # dtypes
    *[(f"{op}-{kind}", f"lc.{op}({value}, backend=b)", "TypeError", "x must hold real numbers")
      for op in ("logsumexp", "softmax", "log_softmax", "sigmoid", "log_sigmoid")
      for kind, value in (("complex", "np.array([1 + 2j, 3j])"), ("string", "np.array(['a', 'b'])"),
                          ("object", "np.array([object(), object()], dtype=object)"))],
    ("ce-complex-logits", f"lc.cross_entropy({X} + 1j, {LABELS}, backend=b)", "TypeError",
     "logits must hold real numbers"),
    ("bce-string-target", f"lc.binary_cross_entropy_with_logits({X}, np.full((4, 3), 'a'), backend=b)",
     "TypeError", "target must hold real numbers"),
    # axes and dimensions
    *[(f"{op}-axis-out-of-range", f"lc.{op}({X}, axis=2, backend=b)", "AxisError",
       r"axis=2 is out of bounds for an array with 2 dimension") for op in
      ("logsumexp", "softmax", "log_softmax")],
    ("softmax-repeated-axis", f"lc.softmax({X}, axis=(1, -1), backend=b)", "ValueError", "repeated axis"),
    ("softmax-float-axis", f"lc.softmax({X}, axis=1.0, backend=b)", "TypeError", "axis must be"),
    ("softmax-0d", "lc.softmax(np.float64(1.0), axis=1, backend=b)", "AxisError", "0-d x"),
    ("ce-0d-logits", "lc.cross_entropy(np.float64(1.0), np.int64(0), backend=b)", "ValueError",
     "logits must have at least 1 dimension"),
    ("ce-bad-class-axis", f"lc.cross_entropy({X}, {LABELS}, axis=3, backend=b)", "AxisError",
     "axis=3 is out of bounds"),
    # labels
    ("label-too-big", f"lc.cross_entropy({X}, np.array([0, 1, 7, 0]), backend=b)", "IndexError",
     r"target\[2\] = 7 is not a class index in \[0, 3\) and not ignore_index \(-100\)"),
    ("label-negative", f"lc.cross_entropy({X}, np.array([0, -3, 0, 0]), backend=b)", "IndexError",
     r"target\[1\] = -3"),
    ("label-huge-uint64", f"lc.cross_entropy({X}, np.array([2**64 - 1, 0, 0, 0], dtype=np.uint64), backend=b)",
     "IndexError", r"target\[0\] = 18446744073709551615"),
    ("label-uint64-wraps-to-ignore-index", f"lc.cross_entropy({X}, np.array([0, 2**64 - 100, 0, 0], dtype=np.uint64), backend=b)",
     "IndexError", r"target\[1\] = 18446744073709551516"),
    ("label-int64-max", f"lc.cross_entropy({X}, np.array([0, 0, 0, 2**63 - 1]), backend=b)",
     "IndexError", r"target\[3\] = 9223372036854775807"),
    ("label-2d-position", "lc.cross_entropy(np.zeros((2, 3, 2)), np.array([[0, 1], [1, 5]]), axis=1, backend=b)",
     "IndexError", r"target\[1, 1\] = 5"),
    ("label-float-dtype", f"lc.cross_entropy({X}, {LABELS}.astype(float), backend=b)", "TypeError",
     "must have an integer dtype, got float64"),
    ("label-string-dtype", f"lc.cross_entropy({X}, np.array(list('abcd')), backend=b)", "TypeError",
     "integer dtype"),
    ("label-shape", f"lc.cross_entropy({X}, {LABELS}[:3], backend=b)", "ValueError",
     r"target has shape \(3,\); integer labels need shape \(4,\), class probabilities shape \(4, 3\)"),
    ("probability-shape", f"lc.cross_entropy({X}, np.zeros((4, 2)), backend=b)", "ValueError",
     r"target has shape \(4, 2\)"),
    ("zero-classes", "lc.cross_entropy(np.zeros((4, 0)), np.zeros(4, int), backend=b)", "ValueError",
     "0 classes"),
    # weights and options
    ("weight-nan", f"lc.cross_entropy({X}, {LABELS}, weight=np.array([1, np.nan, 1]), backend=b)",
     "ValueError", r"weight must be finite; weight\[1\] = "),
    ("weight-inf", f"lc.cross_entropy({X}, {LABELS}, weight=np.array([1, np.inf, 1]), backend=b)",
     "ValueError", "weight must be finite"),
    ("weight-shape", f"lc.cross_entropy({X}, {LABELS}, weight=np.ones(4), backend=b)", "ValueError",
     r"weight must have shape \(3,\)"),
    ("weight-complex", f"lc.cross_entropy({X}, {LABELS}, weight=np.array([1j, 1, 1]), backend=b)",
     "TypeError", "weight must hold real numbers"),
    ("reduction", f"lc.cross_entropy({X}, {LABELS}, reduction='avg', backend=b)", "ValueError",
     "reduction must be one of 'none', 'mean', 'sum'"),
    ("label-smoothing", f"lc.cross_entropy({X}, {LABELS}, label_smoothing=1.5, backend=b)",
     "ValueError", r"label_smoothing must be in \[0, 1\]"),
    ("ignore-index-type", f"lc.cross_entropy({X}, {LABELS}, ignore_index=1.5, backend=b)",
     "TypeError", "ignore_index must be an int"),
    ("grad-out-without-grad", f"lc.cross_entropy({X}, {LABELS}, grad_out=np.empty((4, 3)), backend=b)",
     "ValueError", "grad_out is only used with return_grad=True"),
    ("bce-shape", f"lc.binary_cross_entropy_with_logits({X}, np.zeros((4, 2)), backend=b)",
     "ValueError", r"logits has shape \(4, 3\), target has shape \(4, 2\)"),
    ("bce-pos-weight-inf", f"lc.binary_cross_entropy_with_logits({X}, {X}, pos_weight=np.array([1, np.inf, 1]), backend=b)",
     "ValueError", "pos_weight must be finite"),
    ("bce-weight-nan", f"lc.binary_cross_entropy_with_logits({X}, {X}, weight=np.full((4, 3), np.nan), backend=b)",
     "ValueError", "weight must be finite"),
    ("bce-weight-broadcast", f"lc.binary_cross_entropy_with_logits({X}, {X}, weight=np.ones(5), backend=b)",
     "ValueError", "weight must broadcast to the shape of logits"),
    ("bce-reduction", f"lc.binary_cross_entropy_with_logits({X}, {X}, reduction=None, backend=b)",
     "ValueError", "reduction must be one of"),
    ("backward-shape", f"lc.softmax_backward(np.zeros((4, 2)), {X}, backend=b)", "ValueError",
     r"y has shape \(4, 3\), dy has shape \(4, 2\)"),
    ("b-broadcast", f"lc.logsumexp({X}, b=np.ones(4), backend=b)", "ValueError",
     "b must broadcast against x"),
    # outputs
    ("out-shape", f"lc.softmax({X}, out=np.empty((3, 4)), backend=b)", "ValueError",
     r"out must have shape \(4, 3\), got shape \(3, 4\)"),
    ("out-dtype", f"lc.softmax({X}, out=np.empty((4, 3), np.float32), backend=b)", "TypeError",
     "out must have dtype float64, got dtype float32"),
    ("out-read-only", f"lc.softmax({X}, out=np.broadcast_to(np.empty(3), (4, 3)), backend=b)",
     "ValueError", "out is read-only"),
    ("out-list", f"lc.softmax({X}, out=[[0.0] * 3] * 4, backend=b)", "TypeError",
     "out must be a numpy.ndarray"),
    ("out-partial-overlap", f"buf = {BUFFER}; lc.softmax(buf[:4], out=buf[1:], backend=b)",
     "ValueError", "out overlaps x partially"),
    ("grad-out-partial-overlap",
     f"buf = {BUFFER}; lc.cross_entropy(buf[:4], {LABELS}, return_grad=True, grad_out=buf[1:], backend=b)",
     "ValueError", "grad_out overlaps logits partially"),
    ("grad-out-dtype", f"lc.cross_entropy({X}, {LABELS}, return_grad=True, grad_out=np.empty((4, 3), np.float32), backend=b)",
     "TypeError", "grad_out must have dtype float64"),
    ("logsumexp-out-shape", f"lc.logsumexp({X}, out=np.empty(3), backend=b)", "ValueError",
     r"out must have shape \(4,\)"),
    ("sigmoid-out-read-only", "o = np.zeros(3); o.flags.writeable = False; lc.sigmoid(o, out=o, backend=b)",
     "ValueError", "out is read-only"),
    # backend selection
    ("unknown-backend", f"lc.softmax({X}, backend='gpu')", "ValueError",
     "unknown backend 'gpu'; valid backends are 'numpy', 'numba', 'cython'"),
    ("backend-not-a-string", f"lc.softmax({X}, backend=3)", "TypeError", "backend must be a string"),
    # valid edge input: no exception, checked value
    ("empty-rows", "assert lc.softmax(np.zeros((0, 3)), backend=b).shape == (0, 3)", None, ""),
    ("empty-classes", "assert np.all(lc.logsumexp(np.zeros((2, 0)), backend=b) == -np.inf)", None, ""),
    ("all-ignored-mean-is-nan",
     "assert np.isnan(lc.cross_entropy(np.zeros((2, 3)), np.array([-100, -100]), backend=b))", None, ""),
    ("empty-batch-mean-is-nan",
     "assert np.isnan(lc.cross_entropy(np.zeros((0, 3)), np.zeros(0, int), backend=b))", None, ""),
    ("zero-d-axis-none", "assert lc.logsumexp(np.float64(2.0), axis=None, backend=b) == 2.0", None, ""),
]

_CHILD = r"""
import json, sys
import numpy as np
import logitcore as lc
b = sys.argv[1]
results = {}
for case_id, code in json.loads(sys.stdin.read()):
    try:
        exec(code, {"np": np, "lc": lc, "b": b})
        results[case_id] = [None, ""]
    except Exception as exc:
        results[case_id] = [type(exc).__name__, str(exc)]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def child_results():
    """Run every case in a child process per backend; a crash fails loudly."""
    cache = {}

    def run(backend):
        if backend not in cache:
            payload = json.dumps([(case_id, code) for case_id, code, _, _ in CASES])
            proc = subprocess.run([sys.executable, "-c", _CHILD, backend], input=payload,
                                  capture_output=True, text=True, timeout=600,
                                  env=dict(os.environ, PYTHONFAULTHANDLER="1"))
            assert proc.returncode == 0, (
                f"the child process died (exit {proc.returncode}) on backend {backend}:\n"
                f"{proc.stderr[-4000:]}")
            cache[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        return cache[backend]

    return run


@pytest.mark.parametrize("case_id,code,exception,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(child_results, backend, case_id, code, exception, message):
    got_type, got_message = child_results(backend)[case_id]
    assert got_type == exception, f"{code!r} raised {got_type}: {got_message}"
    if exception is not None:
        assert re.search(message, got_message), f"message {got_message!r} lacks {message!r}"

