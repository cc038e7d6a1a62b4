"""Benchmark (not a test): per-class F1-optimal thresholds of multi-label logits,
logitcore.tune_thresholds against the per-class scikit-learn loop
(precision_recall_curve per class, then the argmax of F1).

    python tools/threshold_bench.py                       # 200000x100 and 1048576x1000
    python tools/threshold_bench.py --shapes 200000x100 --repeat 5
    python tools/threshold_bench.py --cpu-time            # 1 thread, CPU time

The scikit-learn loop is timed on ``--sklearn-classes`` classes and scaled to all of
them (its cost is the same for every class: one sort of a column); its thresholds are
checked against ours on those classes. Runs are interleaved (ours, the loop, ours, ...)
and the best of each is kept, so that a shared, noisy machine affects both alike; the
ratio is the figure to read. The logits are float32 normals shifted by +1.5 on the
positives (5 % of the labels), generated in row chunks. "reads" is the wall time in
units of one logitcore.logsumexp pass over the same logits (one read of them);
tune_thresholds makes two passes over the logits (histogram, gather), whatever that
time is.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import logitcore


def make_problem(n_rows: int, n_classes: int, positive_rate: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = np.empty((n_rows, n_classes), np.float32)
    labels = np.empty((n_rows, n_classes), np.uint8)
    step = max(1, (1 << 24) // n_classes)
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        shape = (rows.stop - rows.start, n_classes)
        labels[rows] = rng.random(shape, dtype=np.float32) < positive_rate
        logits[rows] = rng.standard_normal(shape, dtype=np.float32) + 1.5 * labels[rows]
    return logits, labels


def sklearn_loop(logits, labels, classes):
    """The per-class loop people write: the F1-optimal threshold of each class."""
    from sklearn.metrics import precision_recall_curve
    thresholds = []
    for c in classes:
        precision, recall, t = precision_recall_curve(labels[:, c], logits[:, c])
        precision, recall = precision[:-1], recall[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0,
                          2 * precision * recall / (precision + recall), 0.0)
        thresholds.append(t[np.argmax(f1)])
    return np.array(thresholds)


CLOCK = time.perf_counter


def timed(function):
    start = CLOCK()
    result = function()
    return CLOCK() - start, result


def bench(n_rows, n_classes, repeat, sklearn_classes, positive_rate):
    logits, labels = make_problem(n_rows, n_classes, positive_rate)
    classes = np.linspace(0, n_classes - 1, min(sklearn_classes, n_classes)).astype(int)
    logitcore.tune_thresholds(logits[:1000], labels[:1000], kind="multilabel")  # compile
    logitcore.logsumexp(logits[:1000])
    ours, theirs, reads = [], [], []
    for _ in range(repeat):
        seconds, result = timed(lambda: logitcore.tune_thresholds(logits, labels,
                                                                  kind="multilabel"))
        ours.append(seconds)
        seconds, expected = timed(lambda: sklearn_loop(logits, labels, classes))
        theirs.append(seconds * n_classes / len(classes))
        reads.append(timed(lambda: logitcore.logsumexp(logits))[0])
    if not np.array_equal(result.logit[classes], expected.astype(np.float32)):
        raise SystemExit(f"thresholds differ from scikit-learn's at {n_rows}x{n_classes}")
    best = min(ours)
    print(f"{n_rows}x{n_classes}  tune_thresholds {best:8.3f} s  "
          f"sklearn loop {min(theirs):8.2f} s (from {len(classes)} classes)  "
          f"speed-up {min(theirs) / best:6.1f}x  = {best / min(reads):5.1f} reads of "
          f"the logits (logsumexp {min(reads):.3f} s), 2 passes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["200000x100", "1048576x1000"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sklearn-classes", type=int, default=10)
    parser.add_argument("--positive-rate", type=float, default=0.05)
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread, CPU time (time.process_time) instead of wall "
                             "time: steadier on a shared, loaded machine")
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
        logitcore.set_num_threads(1)
    print(f"threads: {logitcore.get_num_threads()}; best of {args.repeat}, interleaved, "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    for shape in args.shapes:
        n_rows, n_classes = (int(part) for part in shape.lower().split("x"))
        bench(n_rows, n_classes, args.repeat, args.sklearn_classes, args.positive_rate)


if __name__ == "__main__":
    main()
