"""Draw docs/calibration.png: reliability diagrams of a synthetic over-confident classifier
before and after temperature scaling (Guo et al.'s protocol: T fitted by NLL on a
validation split, ECE on the test split, 15 equal-width bins).

The classifier is synthetic: labels are drawn from softmax(z) of random logits z (so z is
calibrated), and the "model" outputs 2.5 z, the over-confidence temperature scaling
undoes. Run: python tools/calibration_figure.py
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import logitcore  # noqa: E402

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "calibration.png"


def synthetic_split(rng, n_rows, n_classes=10):
    z = 1.6 * rng.standard_normal((n_rows, n_classes))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (rng.random((n_rows, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return 2.5 * z, np.minimum(labels, n_classes - 1)


def main():
    rng = np.random.default_rng(0)
    val_logits, val_labels = synthetic_split(rng, 20000)
    test_logits, test_labels = synthetic_split(rng, 20000)
    fit = logitcore.fit_temperature(val_logits, val_labels)
    print(fit)
    figure, axes = plt.subplots(2, 2, figsize=(7.6, 4.9), sharex=True,
                                gridspec_kw={"height_ratios": [3, 1]})
    logitcore.reliability_diagram(test_logits, test_labels, ax=axes[:, 0],
                                  title="before (T = 1)")
    logitcore.reliability_diagram(test_logits, test_labels, temperature=fit.temperature,
                                  ax=axes[:, 1], title=f"after (T = {fit.temperature:.3f})")
    figure.savefig(OUTPUT, dpi=80)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
