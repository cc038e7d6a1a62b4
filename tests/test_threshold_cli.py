"""`logitcore score --tune-thresholds`: the CLI run as a subprocess on files made here.

The tuned thresholds and metric values in the summary JSON are compared with
scikit-learn's curves on the validation rows, and the scored rows with the decisions
``logit >= threshold`` computed here with NumPy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

metrics = pytest.importorskip("sklearn.metrics")


def run_cli(*args, timeout=180):
    code = ("import sys\nfrom logitcore.cli import main\n"
            "raise SystemExit(main(['score', *sys.argv[1:]]))")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


RATES = [0.01, 0.1, 0.3, 0.0]  # a rare class, two common ones, one without positives


def problem(n_rows, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n_rows, len(RATES))) < RATES).astype(np.uint8)
    logits = (rng.normal(size=labels.shape) + 2.0 * labels - 1.0).astype(dtype)
    return logits, labels


@pytest.fixture
def files(tmp_path):
    for name, n_rows, seed in (("val", 4000, 1), ("test", 3000, 2)):
        logits, labels = problem(n_rows, seed)
        np.save(tmp_path / f"{name}_x.npy", logits)
        np.save(tmp_path / f"{name}_y.npy", labels)
    return tmp_path


def sklearn_f1_threshold(logits, labels):
    precision, recall, thresholds = metrics.precision_recall_curve(labels, logits)
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall),
                      0.0)
    best = np.argmax(f1)
    return thresholds[best], f1[best]


def test_multilabel_f1_thresholds_tuned_and_applied(files):
    result = run_cli(files / "test_x.npy", "--labels", files / "test_y.npy", "--kind",
                     "multilabel", "--tune-thresholds", files / "val_x.npy",
                     files / "val_y.npy", "-o", files / "out.npz", "--summary",
                     files / "s.json", "--chunk-rows", 700)
    assert result.returncode == 0, result.stderr
    tuned = json.loads((files / "s.json").read_text())["thresholds"]
    assert tuned["source"] == "tuned" and tuned["metric"] == "f1"
    assert tuned["validation_rows"] == 4000
    val_x, val_y = np.load(files / "val_x.npy"), np.load(files / "val_y.npy")
    for c in range(3):  # classes with positives: scikit-learn's F1-optimal threshold
        threshold, f1 = sklearn_f1_threshold(val_x[:, c], val_y[:, c])
        assert tuned["logit"][c] == float(threshold)
        assert tuned["value"][c] == pytest.approx(f1, rel=1e-12)
        predicted = val_x[:, c] >= threshold
        assert tuned["tp"][c] == np.sum(predicted & (val_y[:, c] == 1))
        assert tuned["fp"][c] == np.sum(predicted & (val_y[:, c] == 0))
    # no positives: predict nothing (+inf), F1 0; applied as the largest p below 1
    assert tuned["logit"][3] == "inf" and tuned["value"][3] == 0.0
    assert tuned["probability"][3] == float(np.nextafter(np.float32(1), np.float32(0)))
    assert all(0 < p < 1 for p in tuned["probability"])
    # the scored rows use the tuned thresholds: logit >= threshold
    x, y = np.load(files / "test_x.npy"), np.load(files / "test_y.npy")
    logit = np.array([float(t) for t in tuned["logit"]], np.float32)
    predicted = x >= logit
    with np.load(files / "out.npz") as out:
        assert np.array_equal(out["n_predicted"], predicted.sum(axis=1))
        assert np.array_equal(out["true_positives"], (predicted & (y == 1)).sum(axis=1))
        assert np.array_equal(out["false_positives"], (predicted & (y == 0)).sum(axis=1))
    assert "thresholds tuned on" in result.stdout and "f1" in result.stdout


def test_binary_youden_j_threshold(files):
    val_x, val_y = np.load(files / "val_x.npy")[:, 1], np.load(files / "val_y.npy")[:, 1]
    x = np.load(files / "test_x.npy")[:, 1].astype(np.float64)  # scored in float64
    np.save(files / "vb_x.npy", val_x)
    np.save(files / "vb_y.npy", val_y)
    np.save(files / "tb_x.npy", x)
    result = run_cli(files / "tb_x.npy", "--kind", "binary", "--tune-thresholds",
                     files / "vb_x.npy", files / "vb_y.npy", "--threshold-metric",
                     "youden_j", "-o", files / "out.npz", "--summary", files / "s.json",
                     "-q")
    assert result.returncode == 0, result.stderr
    tuned = json.loads((files / "s.json").read_text())["thresholds"]
    fpr, tpr, thresholds = metrics.roc_curve(val_y, val_x, drop_intermediate=False)
    best = np.argmax(tpr - fpr)
    assert tuned["metric"] == "youden_j"
    assert tuned["logit"] == float(thresholds[best])
    assert tuned["value"] == pytest.approx(tpr[best] - fpr[best], rel=1e-12)
    with np.load(files / "out.npz") as out:
        assert np.array_equal(out["pred"], x >= thresholds[best])


@pytest.mark.parametrize("case, message", [
    ("multiclass", "--tune-thresholds takes --kind binary or multilabel"),
    ("classes", "validation rows of shape (2,), the scored rows have shape (4,)"),
    ("labels", "tuning the thresholds: labels must be 0 or 1"),
])
def test_bad_validation_files(files, case, message):
    val_x, val_y = np.load(files / "val_x.npy"), np.load(files / "val_y.npy")
    kind = "multiclass" if case == "multiclass" else "multilabel"
    if case == "classes":
        val_x, val_y = val_x[:, :2], val_y[:, :2]
    if case == "labels":
        val_y = val_y * 2
    np.save(files / "bad_x.npy", val_x)
    np.save(files / "bad_y.npy", val_y)
    result = run_cli(files / "test_x.npy", "--kind", kind, "--tune-thresholds",
                     files / "bad_x.npy", files / "bad_y.npy", "-o", files / "out.npz")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert not (files / "out.npz").exists()


def test_option_conflicts(files):
    common = [files / "test_x.npy", "--kind", "multilabel", "-o", files / "out.npz"]
    tune = ["--tune-thresholds", files / "val_x.npy", files / "val_y.npy"]
    result = run_cli(*common, *tune, "--temperature", 2)
    assert result.returncode == 2 and "not allowed with" in result.stderr
    result = run_cli(*common, "--threshold-metric", "f1")
    assert result.returncode == 2 and "--threshold-metric" in result.stderr
