"""`logitcore bench`: every backend and every installed peer, timed in one run.

Each case is (op, shape, dtype). For each one the same synthetic logits go to every
logitcore backend and to the peers that are importable (PyTorch CPU, SciPy, JAX,
scikit-learn's multinomial loss) with the same thread count. A timing is the median of
repeats after one untimed warm-up call (so JIT compilation is excluded). The table gives
milliseconds, GB/s of logits read, the ratio to the fastest peer (>1 means logitcore is
faster) and the ratio to the memory-traffic floor (bytes that must move / measured
bandwidth; 1.0 would be perfect).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _backends, _config, memory_bandwidth
from . import _validate
from ._backends import op_table
from . import _ops as ops
from . import _calibration, _score

REFERENCE_SHAPES = [(65536, 1000), (256, 131072), (4194304, 10), (1, 131072)]
QUICK_SHAPES = [(8192, 1000), (32, 131072), (524288, 10), (1, 131072)]

# Each benchmark op: the kernel of the op table it runs, whether the call asks for the
# gradient, and whether its per-row results are returned (a mean loss returns one number).
# The bytes it must move (the memory floor) come from the op table.
OPS = {
    "logsumexp": dict(kernel="logsumexp", with_gradient=False, row_outputs=True),
    "softmax": dict(kernel="softmax", with_gradient=False, row_outputs=True),
    "log_softmax": dict(kernel="log_softmax", with_gradient=False, row_outputs=True),
    "cross_entropy": dict(kernel="cross_entropy_labels", with_gradient=False,
                          row_outputs=False),
    "cross_entropy_none": dict(kernel="cross_entropy_labels", with_gradient=False,
                               row_outputs=True),
    "cross_entropy_grad": dict(kernel="cross_entropy_labels", with_gradient=True,
                               row_outputs=False),
    "sigmoid": dict(kernel="sigmoid", with_gradient=False, row_outputs=True),
    "bce_with_logits": dict(kernel="bce_with_logits", with_gradient=False, row_outputs=False),
    # every multiclass field of score() with labels and top_k=SCORE_TOP_K
    "score": dict(kernel="score_multiclass", with_gradient=False, row_outputs=True,
                  top_k=5),
    # Calibration (docs/calibration.md). The floor is one read of the logits and labels
    # (temperature_nll's traffic): fit_temperature makes several such passes (its
    # x floor is about its pass count), calibration_error one.
    "fit_temperature": dict(kernel="temperature_nll", with_gradient=False, row_outputs=False),
    "calibration_error": dict(kernel="temperature_nll", with_gradient=False,
                              row_outputs=False),
    # calibration_error of the Scores of an earlier score() call: the logits are not read
    "calibration_error_scores": dict(kernel="temperature_nll", with_gradient=False,
                                     row_outputs=False),
}
SCORE_TOP_K = OPS["score"]["top_k"]
CALIBRATION_OPS = ("fit_temperature", "calibration_error", "calibration_error_scores")
# The calibration ops' logits: the label's logit raised by this much (an informative,
# over-confident classifier rather than random labels, whose fit has no finite optimum).
CALIBRATION_LABEL_BOOST = 4.0


def traffic_bytes(op: str, shape: tuple[int, int], dtype) -> tuple[int, int]:
    """(bytes read, bytes written) that ``op`` must move on logits of ``shape``."""
    spec = OPS[op]
    n_rows, n_classes = shape
    dtype = np.dtype(dtype)
    return op_table.KERNELS[spec["kernel"]].traffic(
        n_rows, n_classes, dtype.itemsize, with_gradient=spec["with_gradient"],
        row_outputs=spec["row_outputs"], top_k=spec.get("top_k", 0),
        out_itemsize=_validate.compute_dtype(dtype, "dtype").itemsize)


def bench_dtype(name: str) -> np.dtype:
    """The dtype called ``name`` (float32, float64, float16, or bfloat16 from the optional
    ml_dtypes package)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise SystemExit("--dtype bfloat16 needs the ml_dtypes package "
                             "(pip install logitcore[bfloat16])") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _torch_tensor(x):
    """x as a torch tensor sharing its memory (bfloat16 through its bits)."""
    import torch

    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


DEFAULT_OPS = ["logsumexp", "softmax", "log_softmax", "cross_entropy", "cross_entropy_none",
               "cross_entropy_grad"]


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    impl: str
    kind: str  # "logitcore" or "peer"
    ms: float
    gbps: float
    x_fastest_peer: float | None = None
    x_floor: float | None = None


# Pause before timing an implementation: the thread pool of the one timed before it (GNU
# OpenMP's workers spin for a few milliseconds after each parallel region) would otherwise
# compete for the cores while a fast case is timed.
SETTLE_S = 0.05
# Fast calls (a single row: tens of microseconds) repeat up to this many times.
MAX_REPEATS = 1000


def _median_seconds(func, repeats: int, budget_s: float) -> float:
    time.sleep(SETTLE_S)
    func()  # warm-up: JIT compilation, page faults of fresh outputs
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < budget_s
                                   and len(times) < MAX_REPEATS):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > 10 * budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def measure_bandwidth(n_threads: int) -> dict:
    """Read and copy bandwidth (bytes/s) on ``n_threads`` threads, measured as STREAM does
    (compiled vectorised loops, best of several runs: ``logitcore.memory_bandwidth``)."""
    return memory_bandwidth.measure(n_threads)


def floor_seconds(read_bytes: int, write_bytes: int, bandwidth: dict) -> float:
    """The least time in which the memory bus moves what an op must move.

    Bytes read and written back (softmax: each logit in, each probability out) move as in
    STREAM's Copy, whose rate counts the bytes read plus the bytes written. Bytes only read
    move at the read rate. Bytes only written (outputs larger than the input) cost two
    thirds of a copied byte pair: the hardware fetches each line before writing it, two of
    the three transfers a copied byte makes.
    """
    paired = min(read_bytes, write_bytes)
    read_only = read_bytes - paired
    write_only = write_bytes - paired
    return (read_only / bandwidth["read"] + 2 * paired / bandwidth["copy"]
            + (4 / 3) * write_only / bandwidth["copy"])


def _make_data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype) * 3
    labels = rng.integers(0, shape[1], size=shape[0])
    return x, labels


def logitcore_runners(op, x, labels, backend):
    """A zero-argument callable running ``op`` on ``backend``.

    Outputs are allocated by each call, as the peers' are, so that the comparison is fair.
    """
    target = (x > 0).astype(x.dtype)
    calls = {
        "logsumexp": lambda: ops.logsumexp(x, backend=backend),
        "softmax": lambda: ops.softmax(x, backend=backend),
        "log_softmax": lambda: ops.log_softmax(x, backend=backend),
        "cross_entropy": lambda: ops.cross_entropy(x, labels, backend=backend),
        "cross_entropy_none": lambda: ops.cross_entropy(x, labels, reduction="none",
                                                        backend=backend),
        "cross_entropy_grad": lambda: ops.cross_entropy(x, labels, return_grad=True,
                                                        backend=backend),
        "sigmoid": lambda: ops.sigmoid(x, backend=backend),
        "bce_with_logits": lambda: ops.binary_cross_entropy_with_logits(
            x, target, backend=backend),
        "score": lambda: _score.score(x, labels, top_k=SCORE_TOP_K, backend=backend),
        "fit_temperature": lambda: _calibration.fit_temperature(x, labels, backend=backend),
        "calibration_error": lambda: _calibration.calibration_error(x, labels,
                                                                    backend=backend),
    }
    if op == "calibration_error_scores":  # binning only: the same for every backend
        scores = _score.score(x, labels, fields=("confidence", "correct", "kept"))
        return lambda: _calibration.calibration_error(scores)
    return calls[op]


def peer_runners(op, x, labels, n_threads) -> dict:
    """name -> callable for every installed peer that implements ``op``."""
    runners = {}
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(n_threads)
        tx = _torch_tensor(x)
        tl = torch.from_numpy(labels)
        t_target = (tx > 0).to(tx.dtype)

        def torch_ce_grad():
            leaf = tx.detach().requires_grad_(True)
            F.cross_entropy(leaf, tl).backward()
            return leaf.grad

        torch_calls = {
            "logsumexp": lambda: torch.logsumexp(tx, dim=-1),
            "softmax": lambda: torch.softmax(tx, dim=-1),
            "log_softmax": lambda: torch.log_softmax(tx, dim=-1),
            "cross_entropy": lambda: F.cross_entropy(tx, tl),
            "cross_entropy_none": lambda: F.cross_entropy(tx, tl, reduction="none"),
            "cross_entropy_grad": torch_ce_grad,
            "sigmoid": lambda: torch.sigmoid(tx),
            "bce_with_logits": lambda: F.binary_cross_entropy_with_logits(tx, t_target),
        }
        def torch_score_pipeline():
            # The per-row figures as people chain them in torch: one pass each.
            log_probs = torch.log_softmax(tx, dim=-1)
            probs = log_probs.exp()
            confidence, pred = probs.max(dim=-1)
            top_probs, top_indices = probs.topk(SCORE_TOP_K, dim=-1)
            entropy = -(probs * log_probs).sum(dim=-1)
            label_logprob = log_probs.gather(-1, tl[:, None])[:, 0]
            return confidence, pred, top_probs, top_indices, entropy, label_logprob

        torch_calls["score"] = torch_score_pipeline

        def torch_lbfgs_temperature():
            # Guo et al.'s recipe (github.com/gpleiss/temperature_scaling): LBFGS on T,
            # lr 0.01, max_iter 50, starting at T = 1.5.
            temperature = torch.nn.Parameter(torch.ones(1, dtype=tx.dtype) * 1.5)
            optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)

            def closure():
                optimizer.zero_grad()
                loss = F.cross_entropy(tx / temperature, tl)
                loss.backward()
                return loss

            optimizer.step(closure)
            return temperature.item()

        torch_calls["fit_temperature"] = torch_lbfgs_temperature
        if op in torch_calls:
            runners["torch"] = torch_calls[op]
        try:
            from torchmetrics.functional.classification import multiclass_calibration_error

            if op.startswith("calibration_error"):
                runners["torchmetrics"] = lambda: multiclass_calibration_error(
                    tx, tl, num_classes=tx.shape[1], n_bins=15, norm="l1")
        except ImportError:
            pass
    except ImportError:
        pass
    if _validate.is_half(x.dtype):  # the other peers do not take 16-bit floats
        return runners
    try:
        import scipy.special as sp

        scipy_calls = {
            "logsumexp": lambda: sp.logsumexp(x, axis=-1),
            "softmax": lambda: sp.softmax(x, axis=-1),
            "log_softmax": lambda: sp.log_softmax(x, axis=-1),
            "sigmoid": lambda: sp.expit(x),
        }
        def scipy_score_pipeline():
            # The same figures with SciPy and NumPy (argpartition, then sort the top k).
            log_probs = sp.log_softmax(x, axis=-1)
            probs = np.exp(log_probs)
            pred = probs.argmax(axis=-1)
            confidence = np.take_along_axis(probs, pred[:, None], axis=-1)[:, 0]
            top = np.argpartition(-probs, SCORE_TOP_K - 1, axis=-1)[:, :SCORE_TOP_K]
            top_probs = np.take_along_axis(probs, top, axis=-1)
            order = np.argsort(-top_probs, axis=-1, kind="stable")
            top_indices = np.take_along_axis(top, order, axis=-1)
            entropy = sp.entr(probs).sum(axis=-1)
            label_logprob = np.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
            return confidence, pred, top_indices, entropy, label_logprob

        scipy_calls["score"] = scipy_score_pipeline

        def scipy_temperature():
            # minimize_scalar (bounded Brent) on log T of the float64 NLL
            from scipy.optimize import minimize_scalar

            label_logit = np.take_along_axis(x, labels[:, None], axis=-1)[:, 0]

            def nll(log_t):
                b = np.exp(-log_t)
                return np.mean(sp.logsumexp(b * x, axis=-1) - b * label_logit)

            return minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x

        scipy_calls["fit_temperature"] = scipy_temperature
        if op in scipy_calls:
            runners["scipy"] = scipy_calls[op]
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        jx = jnp.asarray(x)
        jl = jnp.asarray(labels)

        def jax_ce(logits, labels):
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.mean(lse - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0])

        jax_calls = {
            "logsumexp": jax.jit(lambda a: jax.nn.logsumexp(a, axis=-1)),
            "softmax": jax.jit(lambda a: jax.nn.softmax(a, axis=-1)),
            "log_softmax": jax.jit(lambda a: jax.nn.log_softmax(a, axis=-1)),
            "cross_entropy": jax.jit(jax_ce),
            "cross_entropy_grad": jax.jit(jax.value_and_grad(jax_ce)),
            "sigmoid": jax.jit(jax.nn.sigmoid),
        }
        if op in jax_calls:
            f = jax_calls[op]
            args = (jx, jl) if op.startswith("cross_entropy") else (jx,)
            runners["jax"] = lambda: jax.block_until_ready(f(*args))
    except ImportError:
        pass
    try:
        from sklearn._loss.loss import HalfMultinomialLoss

        loss = HalfMultinomialLoss(n_classes=x.shape[1])
        y_true = labels.astype(x.dtype)
        loss_out = np.empty(x.shape[0], x.dtype)
        grad_out = np.empty_like(x)
        sklearn_calls = {
            "cross_entropy_none": lambda: loss.loss(y_true, x, loss_out=loss_out,
                                                    n_threads=n_threads),
            "cross_entropy_grad": lambda: loss.loss_gradient(
                y_true, x, loss_out=loss_out, gradient_out=grad_out, n_threads=n_threads),
        }
        if op in sklearn_calls and x.shape[1] > 2:
            runners["sklearn"] = sklearn_calls[op]
    except ImportError:
        pass
    try:
        # what CalibratedClassifierCV(method="temperature") fits (scikit-learn >= 1.8)
        from sklearn.calibration import _TemperatureScaling

        if op == "fit_temperature":
            runners["sklearn"] = lambda: _TemperatureScaling().fit(x, labels)
    except ImportError:
        pass
    return runners


def run(shapes, dtypes, op_names, *, n_threads=None, repeats=5, budget_s=1.0,
        backends=None, peers=True, progress=sys.stderr):
    """Time every case; return (rows, meta)."""
    n_threads = n_threads or _config.get_num_threads()
    bandwidth = measure_bandwidth(n_threads)
    backends = backends or [b for b in _backends.BACKEND_NAMES if _backends.is_available(b)]
    rows: list[Row] = []
    for shape in shapes:
        for dtype in dtypes:
            x, labels = _make_data(shape, dtype)
            if any(op in CALIBRATION_OPS for op in op_names):
                x[np.arange(shape[0]), labels] += CALIBRATION_LABEL_BOOST
            for op in op_names:
                case_rows = []
                impls = [(f"logitcore-{b}", "logitcore",
                          logitcore_runners(op, x, labels, b)) for b in backends]
                if peers:
                    impls += [(name, "peer", f) for name, f in
                              peer_runners(op, x, labels, n_threads).items()]
                for name, kind, func in impls:
                    if progress:
                        print(f"  {op:<19} {shape[0]}x{shape[1]} {np.dtype(dtype).name:<7} "
                              f"{name} ...", file=progress, flush=True)
                    try:
                        with _config.config(n_threads=n_threads):
                            seconds = _median_seconds(func, repeats, budget_s)
                    except NotImplementedError:
                        continue
                    case_rows.append(Row(op, f"{shape[0]}x{shape[1]}", np.dtype(dtype).name,
                                         name, kind, seconds * 1e3, x.nbytes / seconds / 1e9))
                peer_ms = [r.ms for r in case_rows if r.kind == "peer"]
                floor_ms = floor_seconds(*traffic_bytes(op, shape, dtype), bandwidth) * 1e3
                for r in case_rows:
                    r.x_fastest_peer = min(peer_ms) / r.ms if peer_ms else None
                    r.x_floor = r.ms / floor_ms
                rows += case_rows
            del x
    meta = {"n_threads": n_threads, "read_GBps": bandwidth["read"] / 1e9,
            "copy_GBps": bandwidth["copy"] / 1e9}
    return rows, meta


def format_table(rows, meta) -> str:
    lines = [f"threads={meta['n_threads']}  measured bandwidth: read "
             f"{meta['read_GBps']:.1f} GB/s, copy {meta['copy_GBps']:.1f} GB/s",
             "",
             "| op | shape | dtype | implementation | ms | GB/s | × fastest peer | × floor |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        peer = f"{r.x_fastest_peer:.2f}" if r.x_fastest_peer is not None else "–"
        lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {r.impl} | {r.ms:.3f} | "
                     f"{r.gbps:.2f} | {peer} | {r.x_floor:.2f} |")
    return "\n".join(lines)


def summary_table(rows) -> str:
    """One line per case: each logitcore backend's ms, torch's ms, and the best backend's
    speed-up over torch and distance from the memory floor."""
    cases: dict = {}
    for r in rows:
        cases.setdefault((r.op, r.shape, r.dtype), {})[r.impl] = r
    backends = sorted({r.impl for r in rows if r.kind == "logitcore"})
    header = " | ".join(f"{b.removeprefix('logitcore-')} ms" for b in backends)
    lines = [f"| op | shape | dtype | {header} | torch ms | best × torch | best × floor |",
             "|---|---|---|" + "---:|" * (len(backends) + 3)]
    for (op, shape, dtype), impls in cases.items():
        ours = [impls[b] for b in backends if b in impls]
        if not ours:
            continue
        best = min(ours, key=lambda r: r.ms)
        torch = impls.get("torch")
        cells = " | ".join(f"{impls[b].ms:.3f}" if b in impls else "–" for b in backends)
        torch_cells = (f"{torch.ms:.3f} | {torch.ms / best.ms:.2f}" if torch else "– | –")
        lines.append(f"| {op} | {shape} | {dtype} | {cells} | {torch_cells} | "
                     f"{best.x_floor:.2f} |")
    return "\n".join(lines)


def write_json(path, rows, meta) -> None:
    from ._info import info_dict

    with open(path, "w") as f:
        json.dump({"meta": meta, "machine": info_dict(), "rows": [asdict(r) for r in rows]},
                  f, indent=1, default=str)
