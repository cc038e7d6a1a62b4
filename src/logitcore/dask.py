"""logitcore on Dask arrays: the ops and ``score`` taking and returning dask collections.

``import logitcore.dask`` needs dask and distributed (``pip install "logitcore[dask]"``);
``import logitcore`` never imports them.

Every function has the signature of the in-memory function of the same name and is lazy:
it returns a dask array (or, for ``score``, a :class:`DaskScores` of dask arrays) and
nothing is read until it is computed. Each task runs logitcore's own kernels on one chunk
of the logits, on as many threads as the dask worker running it has
(``_task_threads``), so a worker with one thread runs our kernels on one thread.

Two chunkings of the class axis:

* **one class chunk** (chunks split the rows only): each chunk is an ordinary in-memory
  call, so every per-row result is bit-identical to the in-memory function on the whole
  array. Sums over rows (the ``"mean"`` and ``"sum"`` reductions of the losses) are float64
  tree sums of the per-row values: the same value up to the order of the float64
  additions.
* **several class chunks** (a long vocabulary split across chunks): never rechunked into
  one. Each chunk computes a small per-row state in float64 (its log-sum-exp and what the
  op needs beyond it), the states of a row are merged through a tree reduction
  (``dask.array.reduction``), and a last step turns the merged state into the result.
  The rounding each op gets from the merge is stated in its docstring.

A chunk's state is computed from a float64 copy of the chunk, so the merged float32
results are as accurate as the in-memory ones (within one unit in the last place, from
the last rounding to float32), not limited by float32 intermediate states.

Dataset figures are reductions of mergeable states, never of per-row data: ``score``
ends in one in-memory ``Scores`` per row block (``DaskScores._blocks``), each block's
``Summary`` is made where the block lives, and ``tree_merge`` merges them. The other
dataset figures work the same way, a per-block state from the block's fields or logits
and its merge: ``reliability`` / ``calibration_error`` (``CalibrationBins``),
``fit_temperature`` (the six float64 sums of each Newton pass; on class chunks after a
tree merge of per-row states along the class axis) and ``tune_thresholds``
(``ThresholdHistogram``, then the ``Candidates`` of the bins that can hold the optimum).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as error:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        'logitcore.dask needs dask and distributed, which are not installed: '
        'pip install "logitcore[dask]"') from error

from . import _config
from . import _ops
from . import _score
from . import _validate as v
from ._backends import op_table
from ._score import Scores, Summary

__all__ = [
    "binary_cross_entropy_with_logits",
    "calibration_error",
    "cross_entropy",
    "DaskScores",
    "fit_temperature",
    "log_softmax",
    "logsumexp",
    "reliability",
    "score",
    "softmax",
    "task_threads",
    "tree_merge",
    "tune_thresholds",
]

# Class-chunk merges: at most this many chunk states are merged by one task.
SPLIT_EVERY = 8


# --- threads ---------------------------------------------------------------------------

def _task_threads() -> int | None:
    """The thread count of the dask worker running this task, or None outside a worker
    (then logitcore's own setting applies)."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        worker = get_worker()
    except ValueError:  # not inside a distributed worker (local schedulers)
        return None
    return worker.state.nthreads


def _on_task_threads(function):
    """``function`` running our kernels on the worker's own thread count."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        n_threads = _task_threads()
        if n_threads is None:
            return function(*args, **kwargs)
        with _config.config(n_threads=n_threads):
            return function(*args, **kwargs)
    return run


def task_threads() -> int:
    """The thread count logitcore's kernels get in the calling task: the dask worker's
    thread count inside a worker, else ``logitcore.get_num_threads()``."""
    n_threads = _task_threads()
    return _config.get_num_threads() if n_threads is None else n_threads


# --- argument helpers ------------------------------------------------------------------

def _as_dask(x, name: str):
    """``x`` as a dask array: dask arrays as they are, anything else as one chunk."""
    if isinstance(x, da.Array):
        return x
    try:
        return da.asarray(x)
    except Exception as error:
        raise TypeError(f"{name} must be a dask array or array-like, got "
                        f"{type(x).__name__}") from error


def _float_dask(x, name: str):
    """A dask array and the dtype logitcore computes and returns in for it."""
    x = _as_dask(x, name)
    return x, v.compute_dtype(x.dtype, name)


def _single_block(part):
    """The one block a task gets along an axis its output drops, where that axis is one
    chunk: ``blockwise(concatenate=False)`` hands the blocks along it as a list."""
    while isinstance(part, list):
        (part,) = part
    return part


def _call_on_blocks(function, *parts):
    return function(*(_single_block(part) for part in parts))


def _rows_blockwise(function, row_inds, *operands, dtype):
    """``da.blockwise(function, row_inds, *operands)`` for operands whose class axis is
    one chunk, dropped from the output. Not ``concatenate=True``: that hands each task
    ``concatenate`` of its class chunks, a copy of the block even when there is only one,
    which doubles the memory traffic of a pass that reads the logits once."""
    return da.blockwise(functools.partial(_call_on_blocks, function), row_inds, *operands,
                        concatenate=False, dtype=dtype,
                        meta=np.empty((0,) * len(row_inds), dtype))


def _unsupported(name: str, value, default, function: str):
    """NotImplementedError for an argument of the in-memory signature that has no dask
    version yet (defaults are None or False)."""
    if value is not default:
        raise NotImplementedError(f"{function}: {name} is not supported on dask arrays "
                                  f"(leave it at its default {default!r}, or compute the "
                                  f"array and call logitcore.{function})")


def _moved(x, source: int, destination: int):
    """``da.moveaxis``, without a graph layer when the axis stays where it is."""
    if source % x.ndim == destination % x.ndim:
        return x
    return da.moveaxis(x, source, destination)


def _class_chunked(x, class_axis: int) -> bool:
    return x.numblocks[class_axis] > 1


# --- class-chunk states ----------------------------------------------------------------
#
# A state is a dict of per-row arrays of one block of rows (float64 for the values):
# logsumexp's and cross_entropy's keep the class axis with length 1, score's hold flat
# rows and the block's row shape. Each op's merge takes the list of states of the same
# rows (class chunks in class order) that dask's tree hands it and returns one state.

def _as_list(parts):
    return parts if isinstance(parts, list) else [parts]


def _lse_merge(values):
    """log(sum exp) of log-sum-exps (float64, NaN and infinities as logsumexp)."""
    with np.errstate(invalid="ignore"):
        return functools.reduce(np.logaddexp, values)


def _entropy_merge(lses, entropies, lse):
    """The entropy of a row from its chunks' log-sum-exps and entropies:
    with w_c = exp(lse_c - lse), H = sum_c w_c (H_c - log w_c). A chunk whose classes are
    all -inf (w_c = 0) adds nothing, whatever its own (undefined) entropy."""
    total = 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        for lse_c, entropy_c in zip(lses, entropies):
            log_w = lse_c - lse
            term = np.exp(log_w) * (entropy_c - log_w)
            total = total + np.where(lse_c == -np.inf, 0.0, term)
    return total


# --- logsumexp -------------------------------------------------------------------------

def _lse_chunk(x, axis, keepdims, backend=None):
    """The float64 log-sum-exp of each row of one class chunk (class axis kept)."""
    return _on_task_threads(_ops.logsumexp)(x.astype(np.float64), axis=axis[0],
                                             keepdims=True, backend=backend)


def _lse_combine(parts, axis, keepdims):
    return _lse_merge(_as_list(parts))


def _lse_aggregate(parts, axis, keepdims, result_dtype=np.float64):
    merged = _lse_merge(_as_list(parts))
    if not keepdims:
        merged = np.squeeze(merged, axis=axis)
    return merged.astype(result_dtype, copy=False)


def _row_lse(x, class_axis: int, keepdims: bool, dtype, backend):
    """The merged log-sum-exp of class-chunked ``x`` along ``class_axis``."""
    return da.reduction(
        x, functools.partial(_lse_chunk, backend=backend),
        functools.partial(_lse_aggregate, result_dtype=dtype), combine=_lse_combine,
        axis=class_axis, keepdims=keepdims, dtype=dtype, concatenate=False,
        split_every=SPLIT_EVERY,
        meta=np.empty((0,) * (x.ndim if keepdims else x.ndim - 1), dtype))


def logsumexp(x, axis=-1, keepdims=False, *, b=None, return_sign=False, out=None,
              backend=None):
    """``logitcore.logsumexp`` of a dask array along one axis, lazily.

    Row chunks: bit-identical to the in-memory call. Class chunks: each chunk's float64
    log-sum-exp, merged with ``logaddexp`` (one rounding per merge, each within an ulp of
    float64), then rounded to the result dtype: float32 results within 1 ulp of the
    in-memory result, float64 within a few ulps (one per merge level). NaN, +inf and
    all -inf rows give NaN, +inf and -inf as in memory. ``b``, ``return_sign`` and
    ``out`` are not supported on dask arrays.
    """
    _unsupported("b", b, None, "logsumexp")
    _unsupported("return_sign", return_sign, False, "logsumexp")
    _unsupported("out", out, None, "logsumexp")
    x, dtype = _float_dask(x, "x")
    if x.ndim == 0:
        raise ValueError("logitcore.dask.logsumexp needs at least 1 dimension")
    class_axis = v.single_axis(axis[0] if isinstance(axis, tuple) and len(axis) == 1
                               else axis, x.ndim)
    if not _class_chunked(x, class_axis):
        compute = _on_task_threads(functools.partial(
            _ops.logsumexp, axis=class_axis, keepdims=keepdims, backend=backend))
        if keepdims:
            chunks = x.chunks[:class_axis] + ((1,),) + x.chunks[class_axis + 1:]
            return x.map_blocks(compute, chunks=chunks, dtype=dtype,
                                meta=np.empty((0,) * x.ndim, dtype))
        all_inds = tuple(range(x.ndim))
        row_inds = all_inds[:class_axis] + all_inds[class_axis + 1:]
        return _rows_blockwise(compute, row_inds, x, all_inds, dtype=dtype)
    return _row_lse(x, class_axis, keepdims, dtype, backend)


# --- softmax, log_softmax --------------------------------------------------------------

def _normalized_block(x, lse, class_axis, log, result_dtype):
    """softmax or log_softmax of one class chunk given its rows' merged log-sum-exp."""
    lse = np.expand_dims(lse, class_axis)
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = x.astype(np.float64) - lse
        # a row holding +inf has no softmax (NaN row), as in memory; NaN and all -inf
        # rows come out NaN from the subtraction itself
        shifted = np.where(lse == np.inf, np.nan, shifted)
        result = shifted if log else np.exp(shifted)
    return result.astype(result_dtype, copy=False)


def _softmax_family(function, x, axis, out, backend, log: bool):
    name = "log_softmax" if log else "softmax"
    _unsupported("out", out, None, name)
    x, dtype = _float_dask(x, "x")
    if x.ndim == 0:
        raise ValueError(f"logitcore.dask.{name} needs at least 1 dimension")
    class_axis = v.single_axis(axis, x.ndim)
    if not _class_chunked(x, class_axis):
        compute = _on_task_threads(functools.partial(function, axis=class_axis,
                                                     backend=backend))
        return x.map_blocks(compute, dtype=dtype, meta=np.empty((0,) * x.ndim, dtype))
    lse = _row_lse(x, class_axis, keepdims=False, dtype=np.float64, backend=backend)
    indices = tuple(range(x.ndim))
    row_indices = indices[:class_axis] + indices[class_axis + 1:]
    return da.blockwise(_normalized_block, indices, x, indices, lse, row_indices,
                        class_axis=class_axis, log=log, result_dtype=dtype, dtype=dtype,
                        meta=np.empty((0,) * x.ndim, dtype))


def softmax(x, axis=-1, *, out=None, backend=None):
    """``logitcore.softmax`` of a dask array, lazily.

    Row chunks: bit-identical to the in-memory call. Class chunks: one tree reduction for
    each row's log-sum-exp (see ``logsumexp``), then one blockwise pass
    ``exp(x - lse)`` in float64 per chunk: float32 within 1 ulp of the in-memory result,
    float64 within a relative 1e-14 or so (the error of the merged lse, times 1).
    """
    return _softmax_family(_ops.softmax, x, axis, out, backend, log=False)


def log_softmax(x, axis=-1, *, out=None, backend=None):
    """``logitcore.log_softmax`` of a dask array, lazily; class chunks as ``softmax``
    (the pass is ``x - lse`` in float64: float32 within 1 ulp, float64 within a few ulps
    of ``|lse|``)."""
    return _softmax_family(_ops.log_softmax, x, axis, out, backend, log=True)


# --- losses ----------------------------------------------------------------------------

def _reduced_loss(row_losses, reduction: str, denominator, dtype):
    """The loss over the rows: float64 tree sum of the per-row losses, divided by
    ``denominator`` (a dask scalar) for the mean, as the in-memory functions do."""
    if reduction == "none":
        return row_losses
    total = row_losses.sum(dtype=np.float64)
    if reduction == "sum":
        return total.astype(dtype)
    # all labels ignored: 0 / 0 = NaN, as in memory (and torch)
    return (total / denominator).astype(dtype)


def _checked_label_block(labels, n_classes, ignore_index, name, block_info=None):
    """The labels of one block as int64, or IndexError naming the first bad one (its
    position in the whole labels array). Checked before the cast, so that a huge uint64
    label cannot wrap around to ignore_index."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        location = block_info[0]["array-location"] if block_info else None
        position = [start + i for (start, _), i in zip(location, where)] if location \
            else list(where)
        raise IndexError(f"{name}{position} = {labels[where]} is not a class index in "
                         f"[0, {n_classes}) and not ignore_index ({ignore_index})")
    return labels.astype(np.int64)


def _labels_for_rows(labels, row_shape, row_chunks, n_classes, ignore_index, name):
    """Integer ``labels`` as a dask array with the rows' shape and chunks, their range
    checked when computed."""
    labels = _as_dask(labels, name)
    if labels.shape != tuple(row_shape):
        raise ValueError(f"{name} must have shape {tuple(row_shape)} (one per row of "
                         f"logits), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    labels = labels.rechunk(row_chunks)
    return labels.map_blocks(_checked_label_block, n_classes, ignore_index, name,
                             dtype=np.int64, meta=np.empty((0,) * labels.ndim, np.int64))


def _ce_chunk_state(x, labels, weight, ignore_index, label_smoothing, backend,
                    block_info=None):
    """Per-row state of one class chunk for cross-entropy with integer labels: the
    chunk's float64 log-sum-exp, the label's logit where the label lies in the chunk,
    and for label smoothing the weighted sum of the chunk's log-probabilities
    (sum w_j (x_j - lse_c)) and of its weights."""
    start, stop = block_info[0]["array-location"][-1]
    x64 = x.astype(np.float64)
    lse = _on_task_threads(_ops.logsumexp)(x64, axis=-1, keepdims=True, backend=backend)
    local = labels - start
    holds = (labels != ignore_index) & (local >= 0) & (local < stop - start)
    label_logit = np.take_along_axis(x64, np.where(holds, local, 0), axis=-1)
    state = {"lse": lse, "holds": holds, "label_logit": np.where(holds, label_logit, 0.0)}
    if label_smoothing:
        w = weight[start:stop].astype(np.float64)
        with np.errstate(invalid="ignore"):
            # a chunk of only -inf logits has log-probabilities -inf (not -inf - -inf)
            log_p = np.where(lse == -np.inf, -np.inf, x64 - lse)
            terms = np.where(w != 0.0, w * log_p, 0.0)
        state["smooth"] = terms.sum(axis=-1, keepdims=True)
        state["weight"] = np.full(lse.shape, w.sum())
    return state


def _ce_merged(parts, axis=None, keepdims=True):
    parts = _as_list(parts)
    lse = _lse_merge([p["lse"] for p in parts])
    state = {"lse": lse,
             "holds": functools.reduce(np.logical_or, [p["holds"] for p in parts]),
             "label_logit": sum(p["label_logit"] for p in parts)}
    if "smooth" in parts[0]:
        # sum w_j (x_j - lse) = sum_c [S_c + W_c (lse_c - lse)]; a chunk without weight,
        # or of only -inf logits (its S_c is already -inf where it has weight), needs no
        # shift (which would be 0 * inf or -inf - -inf)
        smooth = 0.0
        with np.errstate(invalid="ignore"):
            for p in parts:
                shift = np.where((p["weight"] == 0.0) | (p["lse"] == -np.inf), 0.0,
                                 p["weight"] * (p["lse"] - lse))
                smooth = smooth + p["smooth"] + shift
        state["smooth"] = smooth
        state["weight"] = sum(p["weight"] for p in parts)
    return state


def _ce_finish(state, labels, weight, ignore_index, label_smoothing, n_classes, dtype):
    """The row losses of one row block from its merged state."""
    lse = state["lse"][..., 0]
    labels = labels[..., 0]
    kept = labels != ignore_index
    w_y = np.where(kept, weight[np.where(kept, labels, 0)].astype(np.float64), 0.0)
    with np.errstate(invalid="ignore"):
        log_p_y = np.where(np.isfinite(lse), state["label_logit"][..., 0] - lse, np.nan)
        # a class of weight 0 adds nothing, even at probability 0 (log p = -inf)
        loss = -np.where(w_y != 0.0, (1.0 - label_smoothing) * w_y * log_p_y, 0.0)
        if label_smoothing:
            smooth = np.where(np.isfinite(lse), state["smooth"][..., 0], np.nan)
            loss = loss - (label_smoothing / n_classes) * smooth
    return np.where(kept, loss, 0.0).astype(dtype)[..., None]


def _ce_aggregate(parts, axis, keepdims):
    return _ce_merged(parts)


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, return_grad=False,
                  grad_out=None, backend=None):
    """``logitcore.cross_entropy`` on dask arrays with integer labels, lazily.

    Row chunks: the per-row losses (``reduction="none"``) are bit-identical to the
    in-memory call; ``"mean"`` and ``"sum"`` are float64 tree sums of them (the same
    value up to the order of the float64 additions). Class chunks: each chunk gives its
    float64 log-sum-exp and, from the chunk holding it, the label's logit (and for label
    smoothing its weighted log-probability sum); the states are merged in a tree and the
    loss is ``-w_y (x_y - lse)`` (plus torch's smoothing term): float32 within 1 ulp of
    the in-memory loss, float64 within a few ulps of ``|lse|``. ``ignore_index`` rows
    have loss 0; a label out of range raises IndexError when computed.
    Probability targets, ``return_grad`` and ``grad_out`` are not supported on dask
    arrays.
    """
    _unsupported("return_grad", return_grad, False, "cross_entropy")
    _unsupported("grad_out", grad_out, None, "cross_entropy")
    logits, dtype = _float_dask(logits, "logits")
    class_axis, n_classes, reduction, label_smoothing, ignore_index = \
        v.check_cross_entropy_arguments(logits.shape, axis, reduction, label_smoothing,
                                        ignore_index)
    # the weights as the in-memory call uses them (in the logits' dtype), held in float64
    class_weight = (np.ones(n_classes, np.float64) if weight is None
                    else v.check_class_weight(weight, n_classes, dtype).astype(np.float64))
    target_dtype = (target.dtype if isinstance(target, da.Array)
                    else np.asarray(target).dtype)
    if target_dtype.kind == "f":
        raise NotImplementedError("cross_entropy on dask arrays takes integer labels; "
                                  "probability targets are not supported yet")
    x = _moved(logits, class_axis, -1)
    row_shape, row_chunks = x.shape[:-1], x.chunks[:-1]
    labels = _labels_for_rows(target, row_shape, row_chunks, n_classes, ignore_index,
                              "target")
    # the mean's denominator: the summed weight of the labels that are not ignored
    kept_weight = labels.map_blocks(_label_weights, class_weight, ignore_index,
                                    dtype=np.float64).sum()
    if not _class_chunked(x, x.ndim - 1):
        kernel_weight = None if weight is None else class_weight.astype(dtype)
        compute = _on_task_threads(functools.partial(
            _ops.cross_entropy, axis=-1, weight=kernel_weight, ignore_index=ignore_index,
            reduction="none", label_smoothing=label_smoothing, backend=backend))
        row_losses = _per_row_blocks(compute, x, labels, dtype)
    else:
        states = da.map_blocks(
            _ce_chunk_state, x, labels[..., None], class_weight, ignore_index,
            label_smoothing, backend, dtype=np.float64,
            meta=np.empty((0,) * x.ndim, np.float64))
        merged = da.reduction(
            states, _identity_state, _ce_aggregate, combine=_ce_aggregate,
            axis=x.ndim - 1, keepdims=True, dtype=np.float64, concatenate=False,
            split_every=SPLIT_EVERY, meta=np.empty((0,) * x.ndim, np.float64))
        row_losses = da.map_blocks(
            _ce_finish, merged, labels[..., None], class_weight, ignore_index,
            label_smoothing, n_classes, dtype, dtype=dtype,
            meta=np.empty((0,) * x.ndim, dtype))[..., 0]
    return _reduced_loss(row_losses, reduction, kept_weight, dtype)


def _label_weights(labels, class_weight, ignore_index):
    """The class weight of each label, 0 for ignored rows."""
    kept = labels != ignore_index
    return np.where(kept, class_weight[np.where(kept, labels, 0)], 0.0)


def _per_row_blocks(function, x, labels, dtype):
    """``function(block, labels_block)`` per row block of ``x`` (one class chunk, class
    axis last), giving an array with the rows' shape and chunks."""
    rows = tuple(range(x.ndim - 1))
    return _rows_blockwise(function, rows, x, rows + (x.ndim - 1,), labels, rows,
                           dtype=dtype)


def _identity_state(state, axis, keepdims):
    return state


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction="mean", return_grad=False, grad_out=None,
                                     backend=None):
    """``logitcore.binary_cross_entropy_with_logits`` on dask arrays, lazily.

    The loss is elementwise, so any chunking maps over the blocks: ``reduction="none"``
    is bit-identical to the in-memory call, ``"mean"`` and ``"sum"`` are float64 tree
    sums of the elementwise losses (the in-memory call sums per row first: equal up to
    float64 rounding). ``weight`` and ``pos_weight`` broadcast against ``logits`` as in
    memory. ``return_grad`` and ``grad_out`` are not supported on dask arrays.
    """
    _unsupported("return_grad", return_grad, False, "binary_cross_entropy_with_logits")
    _unsupported("grad_out", grad_out, None, "binary_cross_entropy_with_logits")
    logits, dtype = _float_dask(logits, "logits")
    reduction = v.check_reduction(reduction)
    target = _as_dask(target, "target")
    if target.shape != logits.shape:
        raise ValueError(f"logits and target must have the same shape, got "
                         f"{logits.shape} and {target.shape}")
    operands = [logits, target.rechunk(logits.chunks)]
    names = []
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is None:
            continue
        value = _as_dask(value, name)
        try:
            value = da.broadcast_to(value, logits.shape).rechunk(logits.chunks)
        except ValueError:
            raise ValueError(f"{name} must broadcast to the shape of logits: logits has "
                             f"shape {logits.shape}, {name} has shape {value.shape}") \
                from None
        operands.append(value)
        names.append(name)

    def block_losses(x, t, *weights):
        return _ops.binary_cross_entropy_with_logits(
            x, t, reduction="none", backend=backend, **dict(zip(names, weights)))

    losses = da.map_blocks(_on_task_threads(block_losses), *operands, dtype=dtype,
                           meta=np.empty((0,) * logits.ndim, dtype))
    return _reduced_loss(losses, reduction, float(logits.size), dtype)


# --- score -----------------------------------------------------------------------------
#
# Both chunkings end in one object per row block: an in-memory ``Scores`` of the block's
# rows. ``DaskScores`` gives each field as a dask array cut out of those blocks and the
# summary as a tree reduction of the blocks' ``Summary`` objects, so only O(1) bytes per
# block travel for it.

# Class-chunked multiclass scores: what each field needs from the chunk states.
_NEEDS_TOP = ("pred", "max_logit", "confidence", "margin", "logit_margin",
              "top_k_indices", "top_k_probs", "correct")
_NEEDS_SECOND = ("margin", "logit_margin")


def _score_chunk_state(x, labels, *, top_k, want_entropy, want_label, want_brier,
                       ignore_index, backend, block_info=None):
    """Per-row state of one class chunk (class axis last, float64): its log-sum-exp,
    entropy, its ``top_k`` largest logits with their global class indices (ties to the
    lower index; padded with -inf past the chunk's classes), the label's logit where the
    label lies in the chunk, and for Brier the log of sum exp(2 x) over the chunk's
    classes other than the label."""
    start, stop = block_info[0]["array-location"][-1]
    row_shape = x.shape[:-1]
    x64 = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, stop - start)
    threads = _task_threads()
    with _config.config(n_threads=threads) if threads else contextlib.nullcontext():
        fields = ["logsumexp"] + (["entropy"] if want_entropy else [])
        k_here = min(top_k, stop - start)
        if k_here:
            fields.append("top_k_indices")
        chunk = _score.score(x64, top_k=k_here, fields=fields, backend=backend)
        state = {"lse": chunk.logsumexp}
        if want_entropy:
            state["entropy"] = chunk.entropy
        if top_k:
            index = np.full((x64.shape[0], top_k), -1, np.int64)
            value = np.full((x64.shape[0], top_k), -np.inf)
            if k_here:
                local = chunk.top_k_indices
                # -1 marks a NaN row: its values do not matter (the row is NaN at the end)
                local = np.where(local < 0, 0, local)
                index[:, :k_here] = local + start
                value[:, :k_here] = np.take_along_axis(x64, local, axis=1)
            # padding sorts after every class at -inf: index past the last class
            index[:, k_here:] = np.iinfo(np.int64).max
            state["top_index"], state["top_value"] = index, value
        if want_label:
            flat_labels = labels.reshape(-1)
            local = flat_labels - start
            holds = (flat_labels != ignore_index) & (local >= 0) & (local < stop - start)
            safe = np.where(holds, local, 0)[:, None]
            state["holds"] = holds
            state["label_logit"] = np.where(holds, np.take_along_axis(x64, safe, 1)[:, 0],
                                            0.0)
            if want_brier:
                doubled = 2.0 * x64
                rows = np.flatnonzero(holds)
                doubled[rows, local[rows]] = -np.inf  # the label's class is left out
                state["lse2_others"] = _ops.logsumexp(doubled, axis=-1, backend=backend)
    # the states hold flat rows; the block's row shape shapes the fields at the end
    return {"shape": row_shape, **state}


def _merged_tops(values, indices, k):
    """The k largest (value, index) pairs per row, by descending value, ties to the lower
    index."""
    value = np.concatenate(values, axis=1)
    index = np.concatenate(indices, axis=1)
    # lexsort: last key first; NaN sorts last, and NaN rows are masked at the end
    order = np.lexsort((index, -value), axis=1)[:, :k]
    return (np.take_along_axis(value, order, axis=1),
            np.take_along_axis(index, order, axis=1))


def _score_merged(parts, axis=None, keepdims=True):
    """Merge the states of class chunks of the same rows (in class order)."""
    parts = _as_list(parts)
    first = parts[0]
    lses = [p["lse"] for p in parts]
    lse = _lse_merge(lses)
    state = {"shape": first["shape"], "lse": lse}
    if "entropy" in first:
        state["entropy"] = _entropy_merge(lses, [p["entropy"] for p in parts], lse)
    if "top_value" in first:
        state["top_value"], state["top_index"] = _merged_tops(
            [p["top_value"] for p in parts], [p["top_index"] for p in parts],
            first["top_value"].shape[1])
    if "holds" in first:
        state["holds"] = functools.reduce(np.logical_or, [p["holds"] for p in parts])
        state["label_logit"] = sum(p["label_logit"] for p in parts)
    if "lse2_others" in first:
        state["lse2_others"] = _lse_merge([p["lse2_others"] for p in parts])
    return state


def _scores_from_state(state, labels, *, wanted, top_k, n_classes, ignore_index, dtype):
    """The fields asked for, from a row block's merged state (see the edge table in
    logitcore._score: every row rule of the in-memory score is kept)."""
    row_shape = tuple(state["shape"])
    lse = state["lse"]
    no_softmax = ~np.isfinite(lse)  # NaN, +inf or all -inf rows: probabilities NaN
    nan_rows = np.isnan(lse)
    fields = {}
    with np.errstate(invalid="ignore", over="ignore"):
        if "top_value" in state:
            top_value, top_index = state["top_value"], state["top_index"]
            top_prob = np.where(no_softmax[:, None], np.nan,
                                np.exp(top_value - lse[:, None]))
            pred = np.where(nan_rows, -1, top_index[:, 0])
            fields["pred"] = pred
            fields["max_logit"] = np.where(nan_rows, np.nan, top_value[:, 0])
            fields["confidence"] = top_prob[:, 0]
            if top_value.shape[1] > 1:
                fields["margin"] = top_prob[:, 0] - top_prob[:, 1]
                fields["logit_margin"] = np.where(nan_rows, np.nan,
                                                  top_value[:, 0] - top_value[:, 1])
            if top_k:
                fields["top_k_indices"] = np.where(nan_rows[:, None], -1,
                                                   top_index[:, :top_k])
                fields["top_k_probs"] = top_prob[:, :top_k]
        if "entropy" in state:
            fields["entropy"] = np.where(no_softmax, np.nan, state["entropy"])
        fields["logsumexp"] = lse
        kept = None
        if labels is not None:
            flat_labels = labels.reshape(-1)
            kept = flat_labels != ignore_index
            if "label_logit" in state:  # asked for a field that needs the label's logit
                log_p = np.where(no_softmax, np.nan, state["label_logit"] - lse)
                label_logprob = np.where(kept, log_p, 0.0)
                fields["label_logprob"] = label_logprob
                fields["loss"] = 0.0 - label_logprob
            if "pred" in fields:
                fields["correct"] = kept & ~nan_rows & (fields["pred"] == flat_labels)
            if "lse2_others" in state:
                # (1 - p_y)^2 + sum_{j != y} p_j^2, without cancellation near p_y = 1
                others = np.exp(state["lse2_others"] - 2.0 * lse)
                brier = np.square(-np.expm1(log_p)) + others
                fields["brier"] = np.where(kept, np.where(no_softmax, np.nan, brier), 0.0)
            fields["kept"] = kept
    result = {}
    for name in wanted:
        if name == "label_rank":
            continue  # a second pass over the logits (_add_label_rank)
        values = fields[name]
        if values.dtype.kind == "f":
            values = values.astype(dtype)
        result[name] = values.reshape(row_shape + values.shape[1:])
    return Scores(kind="multiclass", fields=result, row_shape=row_shape,
                  n_classes=n_classes, top_k=top_k,
                  labels=None if labels is None else labels.reshape(row_shape),
                  kept=None if kept is None else kept.reshape(row_shape))


def _count_larger(x, label_logit):
    """How many classes of this chunk have a logit strictly larger than the label's."""
    x64 = x.astype(np.float64)
    return np.count_nonzero(x64 > label_logit, axis=-1, keepdims=True).astype(np.int64)


def _block_scores(x, labels, **score_arguments):
    """In-memory ``score`` of one row block (one class chunk, class axis last)."""
    return _on_task_threads(_score.score)(x, labels, axis=-1, **score_arguments)


class DaskScores:
    """The per-row fields of ``logitcore.dask.score`` as dask arrays (lazy), by name as
    ``Scores``: ``scores.pred``, ``scores["loss"]``. ``compute()`` gives the in-memory
    ``Scores`` (all fields in one pass over the logits); ``summary()`` a lazy
    ``Summary`` reduced over the row blocks (``dask.delayed``; ``.compute()`` it)."""

    def __init__(self, blocks, *, kind, fields, row_shape, n_classes, top_k,
                 class_labels):
        self._blocks = blocks  # one in-memory Scores per row block (a dask collection)
        self._fields = fields  # name -> dask array
        self.kind = kind
        self.row_shape = tuple(row_shape)
        self.n_classes = n_classes
        self.top_k = top_k
        # the class labels and kept rows (multiclass / binary with labels), which the
        # summary of compute()'s Scores needs
        self._labels = self._kept = None
        if class_labels:
            row_meta = np.empty((0,) * len(row_shape), np.int64)
            self._labels = da.map_blocks(_labels_of, blocks, dtype=np.int64, meta=row_meta)
            self._kept = da.map_blocks(_kept_of, blocks, dtype=np.bool_,
                                       meta=row_meta.astype(np.bool_))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._fields)

    def __getitem__(self, name):
        try:
            return self._fields[name]
        except KeyError:
            raise KeyError(f"{name!r} was not computed; the fields are "
                           f"{', '.join(self._fields) or 'none'}") from None

    def __getattr__(self, name):
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"DaskScores has no field {name!r}; the fields are "
                             f"{', '.join(fields) or 'none'}")

    def __contains__(self, name) -> bool:
        return name in self._fields

    def __repr__(self) -> str:
        return (f"DaskScores(kind={self.kind!r}, rows={self.row_shape}, "
                f"fields={list(self._fields)})")

    def to_dict(self) -> dict:
        """The fields as a dict of dask arrays."""
        return dict(self._fields)

    def compute(self, **kwargs) -> Scores:
        """The in-memory ``Scores`` of all the rows: every field, and the labels the
        summary needs, in one ``dask.compute`` (one pass over the logits)."""
        names = list(self._fields)
        extra = [] if self._labels is None else [self._labels, self._kept]
        values = dask.compute(*self._fields.values(), *extra, **kwargs)
        labels, kept = values[len(names):] if extra else (None, None)
        return Scores(kind=self.kind, fields=dict(zip(names, values[:len(names)])),
                      row_shape=self.row_shape, n_classes=self.n_classes,
                      top_k=self.top_k, labels=labels, kept=kept)

    def summary(self, split_every: int = SPLIT_EVERY):
        """The ``Summary`` of all the rows, lazily: each row block's summary on the worker
        holding the block, merged in a tree in block order (``Summary.merge``: counts
        exact, means and spreads up to float64 rounding). A ``dask.delayed`` object."""
        summaries = [dask.delayed(_summary_of)(block)
                     for block in self._blocks.to_delayed().ravel()]
        return tree_merge(summaries, Summary.combine, split_every)


def tree_merge(states, combine, split_every: int = SPLIT_EVERY):
    """Merge lazy mergeable states (``dask.delayed`` objects, in order) in a tree of
    ``combine`` calls of at most ``split_every`` states each; returns one delayed state.
    The slot for every dataset figure that is a mergeable state (``Summary``, and the
    calibration bins and temperature-fit sums that build on the same pattern)."""
    if not states:
        raise ValueError("tree_merge needs at least one state")
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    while len(states) > 1:
        states = [dask.delayed(combine)(states[i:i + split_every])
                  for i in range(0, len(states), split_every)]
    return states[0]


def _field_of(scores, name):
    return scores[name]


def _block_fields(blocks, layout, row_chunks) -> dict:
    """Each field as a dask array cut out of the row blocks' ``Scores``."""
    fields = {}
    for name, (extra_chunks, dtype) in layout.items():
        n_axes = len(row_chunks) + len(extra_chunks)
        fields[name] = da.map_blocks(
            _field_of, blocks, name, chunks=tuple(row_chunks) + extra_chunks,
            new_axis=list(range(len(row_chunks), n_axes)) or None, dtype=dtype,
            meta=np.empty((0,) * n_axes, dtype))
    return fields


def _labels_of(scores):
    return scores._labels


def _kept_of(scores):
    return scores._kept


def _summary_of(scores):
    return scores.summary()


def _field_layout(kind, wanted, top_k, n_classes, dtype):
    """Per field: the chunks of its axes past the rows, and its dtype (from the output
    roles of the kind's kernel in the op table, as the in-memory score allocates)."""
    kernel = op_table.KERNELS[_score._KERNEL_OF_KIND[kind]]
    roles = {name[:-len("_out")]: role for name, role in kernel.arguments
             if role in _score._OUTPUT_ROLES}
    layout = {}
    for name in wanted:
        if name == "kept":
            layout[name] = ((), np.dtype(np.bool_))
            continue
        role = roles[name]
        shape_of, field_dtype = _score._OUTPUT_ROLES[role]
        extra = tuple((n,) for n in shape_of(1, n_classes, top_k)[1:])
        layout[name] = (extra, field_dtype or dtype)
    return layout


def score(logits, labels=None, *, axis=-1, kind="multiclass", top_k=0, threshold=0.5,
          ignore_index=-100, fields=None, backend=None) -> DaskScores:
    """``logitcore.score`` of dask arrays, lazily: a :class:`DaskScores` whose fields are
    dask arrays and whose ``summary()`` is a distributed reduction.

    Row chunks (the class axis in one chunk): each row block is an in-memory ``score``
    call, so every field is bit-identical to the in-memory result. Class chunks
    (multiclass only): each chunk gives a float64 per-row state - log-sum-exp, entropy,
    its top logits with global indices, the label's logit - merged in a tree: ``pred``,
    ``max_logit``, ``top_k_indices``, ``correct`` and ``kept`` are exact (ties to the
    lower global index); ``label_rank`` is exact and reads the logits a second time (the
    count of larger logits needs the label's logit first: persist the logits if they come
    from storage); ``logsumexp``, ``label_logprob``, ``loss`` and the probabilities
    (``confidence``, ``margin``, ``top_k_probs``) are within 1 ulp (float32) or a few
    ulps of ``|lse|`` (float64) of the in-memory values; ``logit_margin`` is exact;
    ``entropy`` (sum_c w_c (H_c - log w_c), w_c = exp(lse_c - lse)) and ``brier``
    ((1 - p_y)^2 + exp(lse(2x, others) - 2 lse)) are within a few float64 ulps before the
    rounding to the result dtype. Binary scores have one class per row. Multilabel
    fields are sums or an "all" over classes: class chunks merge the counts and
    ``exact_match`` exactly and ``loss`` as a float64 sum of the chunks' BCE (within 1
    ulp); the predicted matrix is computed per chunk (bit-identical).
    """
    kind = _score._check_kind(kind)
    logits, dtype = _float_dask(logits, "logits")
    ignore_index = v.check_ignore_index(ignore_index)
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension, got a 0-d array")
    if kind == "binary" and logits.ndim == 1:
        x = logits[:, None]  # one class per row
    else:
        class_axis = v.single_axis(axis, logits.ndim)
        x = _moved(logits, class_axis, -1)
        if kind == "binary" and x.shape[-1] != 1:
            raise ValueError(
                f"kind='binary' takes one logit per row: shape (n,) or axis {axis} of "
                f"length 1, got logits of shape {logits.shape}")
    n_classes = x.shape[-1]
    if n_classes == 0:
        raise ValueError(f"logits has 0 classes along axis {axis}: shape {logits.shape}")
    top_k = _score._check_top_k(top_k, kind, n_classes)
    # as the in-memory score: a multilabel threshold per class, in the logits' dtype
    threshold = _score._check_threshold(threshold, kind, n_classes, dtype)
    has_labels = labels is not None
    wanted = _score._check_fields(fields, kind, has_labels, top_k)
    row_shape, row_chunks = x.shape[:-1], x.chunks[:-1]
    class_chunked = _class_chunked(x, x.ndim - 1)
    layout = _field_layout(kind, wanted, top_k, n_classes, dtype)

    label_array = None
    if has_labels:
        if kind == "multilabel":
            label_array = _as_dask(labels, "labels")
            if label_array.shape != logits.shape:
                raise ValueError(f"labels for kind='multilabel' must have the shape of "
                                 f"logits {logits.shape} (0 / 1 per class), got shape "
                                 f"{label_array.shape}")
            label_array = _moved(label_array, class_axis, -1).rechunk(x.chunks)
        else:
            label_array = _labels_for_rows(labels, row_shape, row_chunks,
                                           2 if kind == "binary" else n_classes,
                                           ignore_index, "labels")
    if not class_chunked:
        score_arguments = dict(kind=kind, top_k=top_k, threshold=threshold,
                               ignore_index=ignore_index, fields=wanted, backend=backend)
        row_inds = tuple(range(x.ndim - 1))
        all_inds = row_inds + (x.ndim - 1,)
        if kind == "binary":
            operands = (x[..., 0], row_inds)
        else:
            operands = (x, all_inds)
        if label_array is not None:
            operands += (label_array, all_inds if kind == "multilabel" else row_inds)
        function = functools.partial(_block_scores if label_array is not None
                                     else _block_scores_unlabelled, **score_arguments)
        blocks = _rows_blockwise(function, row_inds, *operands, dtype=object)
        fields = _block_fields(blocks, layout, row_chunks)
        if "pred" in fields and kind == "multilabel":  # back in the caller's layout
            fields["pred"] = _moved(fields["pred"], -1, class_axis)
        return DaskScores(blocks, kind=kind, fields=fields, row_shape=row_shape,
                          n_classes=n_classes, top_k=top_k,
                          class_labels=has_labels and kind != "multilabel")
    if kind == "multilabel":
        return _multilabel_class_chunks(x, label_array, threshold, wanted, layout,
                                        class_axis, backend)
    want = set(wanted)
    n_top = max(top_k, 2 if want & set(_NEEDS_SECOND) else
                (1 if want & set(_NEEDS_TOP) else 0))
    state_arguments = dict(
        top_k=n_top, want_entropy="entropy" in want,
        want_label=bool(want & {"label_logprob", "loss", "label_rank", "brier"}),
        want_brier="brier" in want, ignore_index=ignore_index, backend=backend)
    label_operand = (label_array[..., None] if label_array is not None
                     else da.zeros(row_shape + (1,), np.int64,
                                   chunks=row_chunks + ((1,),)))
    states = da.map_blocks(
        functools.partial(_score_chunk_state, **state_arguments), x, label_operand,
        dtype=np.float64, meta=np.empty((0,) * x.ndim, np.float64))
    merged = da.reduction(
        states, _identity_state, _score_aggregate, combine=_score_aggregate,
        axis=x.ndim - 1, keepdims=True, dtype=object, concatenate=False,
        split_every=SPLIT_EVERY, meta=np.empty((0,) * x.ndim, object))
    blocks = da.map_blocks(
        _scores_block, merged, label_operand, has_labels=label_array is not None,
        wanted=wanted, top_k=top_k, n_classes=n_classes, ignore_index=ignore_index,
        result_dtype=dtype, dtype=object, meta=np.empty((0,) * x.ndim, object))
    if "label_rank" in want:
        label_logit = da.map_blocks(_label_logit_of, blocks, dtype=np.float64,
                                    meta=np.empty((0,) * x.ndim, np.float64))
        larger = da.map_blocks(_count_larger, x, label_logit, dtype=np.int64,
                               meta=np.empty((0,) * x.ndim, np.int64),
                               chunks=row_chunks + ((1,) * x.numblocks[-1],))
        larger = larger.sum(axis=-1, keepdims=True)
        blocks = da.map_blocks(_add_label_rank, blocks, larger, wanted=wanted,
                               dtype=object, meta=np.empty((0,) * x.ndim, object))
    row_inds = tuple(range(x.ndim - 1))
    blocks = da.blockwise(_only, row_inds, blocks, row_inds + (x.ndim - 1,),
                          concatenate=False, dtype=object,
                          meta=np.empty((0,) * len(row_inds), object))
    return DaskScores(blocks, kind=kind, fields=_block_fields(blocks, layout, row_chunks),
                      row_shape=row_shape, n_classes=n_classes, top_k=top_k,
                      class_labels=has_labels)


def _only(parts):
    """The one block of a list over an axis of one chunk."""
    parts = _as_list(parts)
    if len(parts) != 1:
        raise AssertionError(f"expected one block, got {len(parts)}")
    return parts[0]


def _block_scores_unlabelled(x, **score_arguments):
    return _block_scores(x, None, **score_arguments)


def _score_aggregate(parts, axis, keepdims):
    return _score_merged(parts)


def _scores_block(state, labels, *, has_labels, wanted, top_k, n_classes, ignore_index,
                  result_dtype):
    """A row block's ``Scores`` from its merged state, with the label's logit kept
    aside for the rank pass."""
    scores = _scores_from_state(state, labels[..., 0] if has_labels else None,
                                wanted=wanted, top_k=top_k, n_classes=n_classes,
                                ignore_index=ignore_index, dtype=result_dtype)
    label_logit = state.get("label_logit")
    scores._label_logit = (None if label_logit is None
                           else label_logit.reshape(scores.row_shape + (1,)))
    scores._nan_rows = np.isnan(state["lse"]).reshape(scores.row_shape)
    return scores


def _label_logit_of(scores):
    return scores._label_logit


def _add_label_rank(scores, larger, *, wanted):
    rank = np.where(scores._kept & ~scores._nan_rows, 1 + larger[..., 0], 0)
    fields = dict(scores._fields)
    fields["label_rank"] = rank.astype(np.int64)
    ordered = {name: fields[name] for name in wanted}
    return Scores(kind=scores.kind, fields=ordered, row_shape=scores.row_shape,
                  n_classes=scores.n_classes, top_k=scores.top_k, labels=scores._labels,
                  kept=scores._kept)


# --- multilabel scores on class chunks ----------------------------------------------------
#
# Every multilabel field is a sum over classes (counts, summed BCE) or an "all" (exact
# match) of per-class terms, so class chunks merge exactly; the predicted matrix is per
# class and needs no merge at all.

_MULTILABEL_COUNTS = ("n_predicted", "true_positives", "false_positives",
                      "false_negatives")


def _multilabel_chunk_state(x, targets, *, threshold, fields, backend, block_info=None):
    """One class chunk's multilabel fields (float64 logits: the loss comes summed over
    the chunk's classes in float64; the thresholds are the in-memory call's, so the
    predictions are the same)."""
    start, stop = block_info[0]["array-location"][-1]
    x64 = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, stop - start)
    if targets is not None:
        targets = targets.reshape(x64.shape)
    chunk = _on_task_threads(_score.score)(
        x64, targets, kind="multilabel", fields=fields, backend=backend,
        threshold=threshold[start:stop].astype(np.float64))
    state = {"shape": x.shape[:-1]}
    state.update((name, chunk[name]) for name in fields)
    if "loss" in state:  # the chunk's mean BCE -> its sum
        state["loss"] = state["loss"] * float(stop - start)
    return state


def _multilabel_merged(parts, axis=None, keepdims=True):
    parts = _as_list(parts)
    state = {"shape": parts[0]["shape"]}
    for name in parts[0]:
        if name in _MULTILABEL_COUNTS or name == "loss":
            state[name] = sum(p[name] for p in parts)
        elif name == "exact_match":
            state[name] = functools.reduce(np.logical_and, [p[name] for p in parts])
    return state


def _multilabel_scores(state, *, wanted, n_classes, result_dtype):
    row_shape = tuple(state["shape"])
    fields = {}
    for name in wanted:
        if name == "pred":
            continue  # the matrix comes blockwise
        values = state[name]
        if name == "loss":  # the mean BCE over all the classes
            values = (values / n_classes).astype(result_dtype)
        fields[name] = values.reshape(row_shape)
    return Scores(kind="multilabel", fields=fields, row_shape=row_shape,
                  n_classes=n_classes, top_k=0, labels=None, kept=None)


def _multilabel_pred_block(x, *, threshold, backend, block_info=None):
    """The predicted matrix of one chunk (an in-memory call on the chunk's classes)."""
    start, stop = block_info[0]["array-location"][-1]
    return _on_task_threads(_score.score)(
        x, kind="multilabel", fields=["pred"], backend=backend,
        threshold=threshold[start:stop]).pred


def _multilabel_class_chunks(x, targets, threshold, wanted, layout, class_axis, backend):
    """``score(kind="multilabel")`` of ``x`` (class axis last, split in chunks)."""
    n_classes = x.shape[-1]
    row_fields = [name for name in wanted if name != "pred"]
    state_function = functools.partial(_multilabel_chunk_state, threshold=threshold,
                                       fields=row_fields, backend=backend)
    meta = np.empty((0,) * x.ndim, object)
    if targets is None:
        states = da.map_blocks(lambda block, block_info=None: state_function(
            block, None, block_info=block_info), x, dtype=object, meta=meta)
    else:
        states = da.map_blocks(state_function, x, targets, dtype=object, meta=meta)
    merged = da.reduction(
        states, _identity_state, _multilabel_aggregate, combine=_multilabel_aggregate,
        axis=x.ndim - 1, keepdims=True, dtype=object, concatenate=False,
        split_every=SPLIT_EVERY, meta=meta)
    row_inds = tuple(range(x.ndim - 1))
    blocks = da.blockwise(
        lambda parts: _multilabel_scores(_only(parts), wanted=wanted, n_classes=n_classes,
                                         result_dtype=layout["loss"][1] if "loss" in layout
                                         else np.float64),
        row_inds, merged, row_inds + (x.ndim - 1,), concatenate=False, dtype=object,
        meta=np.empty((0,) * len(row_inds), object))
    fields = _block_fields(blocks, {name: layout[name] for name in row_fields},
                           x.chunks[:-1])
    if "pred" in wanted:
        pred = x.map_blocks(_multilabel_pred_block, threshold=threshold, backend=backend,
                            dtype=np.bool_, meta=np.empty((0,) * x.ndim, np.bool_))
        fields["pred"] = _moved(pred, -1, class_axis)
    fields = {name: fields[name] for name in wanted}
    return DaskScores(blocks, kind="multilabel", fields=fields, row_shape=x.shape[:-1],
                      n_classes=n_classes, top_k=0, class_labels=False)


def _multilabel_aggregate(parts, axis, keepdims):
    return _multilabel_merged(parts)


# --- fit_temperature ---------------------------------------------------------------------
#
# Each Newton pass of the in-memory fit is one call of the temperature_nll kernel, which
# returns six float64 sums over the rows (weight, NLL, NLL', NLL'', the slope as
# b -> inf, NLL'''). Sums over row blocks add up, so a pass on dask is one kernel call
# per row block and a tree sum of the blocks' six numbers: 48 bytes per block travel,
# never a row. The Newton iteration itself
# (_calibration._newton_on_log_inverse_temperature) runs in the caller's process and is
# the in-memory one.

def _temperature_block_sums(x, labels, weights, *, inverse_temperature, ignore_index,
                            backend):
    """The temperature_nll sums of one row block (class axis last, whole rows)."""
    x = v.as_float_array(x, "logits")
    x2d = _ops._as_rows(x, (x.ndim - 1,))
    flat_labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    weights = (np.empty(0, x2d.dtype) if weights is None
               else np.ascontiguousarray(weights, dtype=x2d.dtype).reshape(-1))
    return np.asarray(_on_task_threads(_ops._run)(
        "temperature_nll", "fit_temperature", backend, x2d, flat_labels, weights,
        ignore_index, inverse_temperature), dtype=np.float64)


def _bad_rows_block(x, labels, weights, *, ignore_index):
    """Per row of a block: kept and holding NaN / +inf, only -inf, or -inf at its label
    (the rows whose NLL is infinite at every temperature)."""
    x2d = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    flat_labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    kept = flat_labels != ignore_index
    if weights is not None:
        kept &= np.asarray(weights).reshape(-1) != 0
    with np.errstate(invalid="ignore"):
        row_max = np.max(x2d, axis=1) if x2d.shape[1] else np.full(x2d.shape[0], np.nan)
    label_logit = x2d[np.arange(x2d.shape[0]), np.where(kept, flat_labels, 0)]
    bad = kept & (~np.isfinite(row_max) | np.isnan(x2d).any(axis=1)
                  | (label_logit == -np.inf))
    return bad.reshape(x.shape[:-1])


def _sum_arrays(parts):
    return functools.reduce(np.add, parts)


def _pass_means(block_sums, blocks, **arguments):
    """One pass of a temperature fit: ``block_sums(x, labels, weights, **arguments)`` of
    every row block (weight, NLL, NLL', NLL'', limit slope), summed in a tree and
    divided by the total weight."""
    function = dask.delayed(block_sums, pure=True)
    parts = [function(xb, lb, wb, **arguments) for xb, lb, wb in zip(*blocks)]
    (sums,) = dask.compute(tree_merge(parts, _sum_arrays))
    if sums[0] == 0.0:
        raise ValueError("fit_temperature: no rows to fit: every label is ignore_index "
                         "or has weight 0")
    return tuple(float(s) for s in sums[1:] / sums[0])


def _checked_sample_weight(sample_weight, row_shape, row_chunks):
    """``sample_weight`` as a float64 dask array with the rows' shape and chunks, finite
    and >= 0 (checked when computed), or None."""
    if sample_weight is None:
        return None
    weights = _as_dask(sample_weight, "sample_weight")
    if weights.shape != tuple(row_shape):
        raise ValueError(f"sample_weight must have the shape of labels {tuple(row_shape)},"
                         f" got {weights.shape}")
    if weights.dtype.kind not in "iuf":
        raise TypeError(f"sample_weight must be numbers, got dtype {weights.dtype}")
    return weights.rechunk(row_chunks).map_blocks(_checked_weight_block, dtype=np.float64)


def _checked_weight_block(weights):
    weights = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("sample_weight must be finite and >= 0")
    return weights


def _row_block_delayed(*arrays):
    """The row blocks of each array (None stays None), flat in block order, as lists of
    ``dask.delayed`` objects of the same length."""
    lists = []
    for array in arrays:
        lists.append(None if array is None else list(array.to_delayed().ravel()))
    n_blocks = len(next(blocks for blocks in lists if blocks is not None))
    return [blocks if blocks is not None else [None] * n_blocks for blocks in lists]


# --- fit_temperature on class chunks --------------------------------------------------
#
# A pass on class-chunked logits cannot call the temperature_nll kernel (it needs whole
# rows). The kernel's own per-row algorithm merges blocks of a row; here the blocks are
# the class chunks. Each chunk gives, per row and at the pass's inverse temperature b,
# with m its max (ignoring NaN; the shift is 0 where m is not finite), d = x - m and
# e = exp(b d): others = sum e - n_at_max, n_at_max (the classes at m, e = 1 exactly),
# s1, s2, s3 = sum e d, e d^2, e d^3 (terms with e = 0 add 0), and the label's logit
# where the label lies in the chunk. States of a row merge under the larger max as the
# kernel's temperature_row merges its blocks (shifted_moments); the merged state gives
# the row's NLL, NLL', NLL'', limit slope and NLL''' as the kernel does, and a row
# block's weighted sums of them are the pass sums of the block.


# Rows of a chunk are processed this many elements at a time, so that the float64
# temporaries stay in cache (measured: half the time of whole-chunk temporaries).
_TEMPERATURE_TILE_ELEMENTS = 1 << 14


def _temperature_tile_moments(tile, b):
    """(max, others, n_at_max, s1, s2, s3) per row of a 2-D tile, as the kernel's
    temperature_block_moments: the max ignores NaN (a NaN makes the sums NaN), the
    shift is 0 where the max is not finite, and terms with e = 0 add 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = tile.astype(np.float64)
        tile_max = np.fmax.reduce(d, axis=1)
        d -= np.where(np.isfinite(tile_max), tile_max, 0.0)[:, None]
        e = np.multiply(d, b)
        np.exp(e, out=e)
        at_max = d == 0.0
        n_at_max = np.count_nonzero(at_max, axis=1).astype(np.float64)
        # the classes at the max (e = 1 exactly) are left out of others, not subtracted
        # from the sum (log1p(others) keeps a tiny others exact); their d = 0 adds
        # nothing to the moments either
        e[at_max] = 0.0
        others = e.sum(axis=1)
        d[e == 0.0] = 0.0  # e = 0 (d = -inf, or underflow) adds 0, not -inf * 0
        e *= d
        s1 = e.sum(axis=1)
        e *= d
        s2 = e.sum(axis=1)
        e *= d
        s3 = e.sum(axis=1)
    return tile_max, others, n_at_max, s1, s2, s3


def _temperature_chunk_state(x, labels, *, inverse_temperature, ignore_index,
                             block_info=None):
    """The per-row temperature state of one class chunk (float64 NumPy, row tiles of
    _TEMPERATURE_TILE_ELEMENTS; class axis last, kept with length 1)."""
    start, stop = block_info[0]["array-location"][-1]
    b = inverse_temperature
    row_shape = x.shape[:-1] + (1,)
    x2d = x.reshape(-1, x.shape[-1])
    names = ("max", "others", "n_at_max", "s1", "s2", "s3")
    columns = [np.empty(x2d.shape[0]) for _ in names]
    if x2d.shape[1] == 0:  # no classes: nothing to add (a row of only -inf)
        columns = [np.full(x2d.shape[0], -np.inf)] + [np.zeros(x2d.shape[0])] * 5
    else:
        rows = max(1, _TEMPERATURE_TILE_ELEMENTS // x2d.shape[1])
        for first in range(0, x2d.shape[0], rows):
            for column, value in zip(columns, _temperature_tile_moments(
                    x2d[first:first + rows], b)):
                column[first:first + rows] = value
    state = {name: column.reshape(row_shape) for name, column in zip(names, columns)}
    local = labels - start
    holds = (labels != ignore_index) & (local >= 0) & (local < stop - start)
    label_logit = np.take_along_axis(x, np.where(holds, local, 0), axis=-1)
    state["label_logit"] = np.where(holds, label_logit.astype(np.float64), 0.0)
    state["b"] = b
    return state


def _shifted_moments(state, delta, b):
    """(total, s1, s2, s3) of a state re-expressed relative to a max larger by -delta
    (delta <= 0), as the kernel's shifted_moments."""
    total = state["others"] + state["n_at_max"]
    scale = np.exp(b * delta)
    return (total * scale, (state["s1"] + delta * total) * scale,
            (state["s2"] + 2.0 * delta * state["s1"] + delta * delta * total) * scale,
            (state["s3"] + 3.0 * delta * state["s2"] + 3.0 * delta * delta * state["s1"]
             + delta * delta * delta * total) * scale)


def _temperature_merge_two(a, c):
    """The state of a row from the states of two of its class chunks, under the larger
    max (as the kernel merges the blocks of a row): the side holding it keeps its sums,
    the other is moved under it; a chunk whose every class is -inf (total 0) adds
    nothing. A NaN max (a chunk of NaN) moves by a NaN delta: the row's sums are NaN."""
    b = a["b"]
    empty = [(side["others"] + side["n_at_max"]) == 0.0 for side in (a, c)]
    with np.errstate(invalid="ignore", over="ignore"):
        maxes = [np.where(side_empty, -np.inf, side["max"])
                 for side, side_empty in zip((a, c), empty)]
        row_max = np.fmax(*maxes)
        merged = {"others": 0.0, "n_at_max": 0.0, "s1": 0.0, "s2": 0.0, "s3": 0.0}
        for side, side_max, side_empty in zip((a, c), maxes, empty):
            holds_max = ~side_empty & (side_max == row_max)
            delta = np.where(holds_max | side_empty, 0.0, side_max - row_max)
            total, s1, s2, s3 = _shifted_moments(side, delta, b)
            moved = {"others": total, "n_at_max": 0.0, "s1": s1, "s2": s2, "s3": s3}
            for name in merged:
                value = np.where(holds_max, side[name], moved[name])
                merged[name] = merged[name] + np.where(side_empty, 0.0, value)
    merged["max"] = np.where(empty[0] & empty[1], np.fmax(a["max"], c["max"]), row_max)
    merged["label_logit"] = a["label_logit"] + c["label_logit"]
    merged["b"] = b
    return merged


def _temperature_merged(parts, axis=None, keepdims=True):
    return functools.reduce(_temperature_merge_two, _as_list(parts))


def _temperature_state_sums(state, labels, weights, *, ignore_index):
    """The six pass sums (weight, NLL, NLL', NLL'', limit slope, NLL''') of one row
    block from its merged states, as the temperature_nll kernel computes them."""
    b = state["b"]
    flat_labels = np.asarray(labels).reshape(-1)
    w = (np.ones(flat_labels.size) if weights is None
         else np.asarray(weights, np.float64).reshape(-1))
    kept = (flat_labels != ignore_index) & (w != 0.0)
    row_max, others, n_at_max, s1, s2, s3, label_logit = (
        state[name].reshape(-1)[kept]
        for name in ("max", "others", "n_at_max", "s1", "s2", "s3", "label_logit"))
    w = w[kept]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        label_d = label_logit - row_max
        total = others + n_at_max
        mean_d = s1 / total
        variance = np.maximum(s2 / total - mean_d * mean_d, 0.0)
        nll = np.log1p(others + (n_at_max - 1.0)) - b * label_d
        third = s3 / total - 3.0 * mean_d * (s2 / total) + 2.0 * mean_d ** 3
        bad = ~np.isfinite(row_max) | ~np.isfinite(others)
        stats = [np.where(bad, np.nan, s)
                 for s in (nll, mean_d - label_d, variance, -label_d, third)]
    return np.array([w.sum()] + [np.sum(w * s) for s in stats], dtype=np.float64)


def _temperature_state_bad_rows(state, labels, weights, *, ignore_index):
    """Per row of a block: kept, and its NLL is not finite (NaN / +inf, only -inf, or
    -inf at its label)."""
    flat_labels = np.asarray(labels)
    kept = flat_labels != ignore_index
    if weights is not None:
        kept &= np.asarray(weights) != 0
    with np.errstate(invalid="ignore"):
        bad = (~np.isfinite(state["max"][..., 0]) | ~np.isfinite(state["others"][..., 0])
               | (state["label_logit"][..., 0] == -np.inf))
    return kept & bad


def _fit_class_chunked_temperature(x, labels, weights, ignore_index, row_shape):
    """The multiclass fit of class-chunked ``x`` (class axis last): every pass builds the
    chunk states at its b, merges them in a tree along the class axis and sums each row
    block's pass sums in a tree over the row blocks."""
    from . import _calibration as cal

    meta = np.empty((0,) * x.ndim, np.float64)
    label_column = labels[..., None]

    def merged_states(b):
        states = da.map_blocks(
            _temperature_chunk_state, x, label_column, inverse_temperature=b,
            ignore_index=ignore_index, dtype=np.float64, meta=meta)
        return da.reduction(
            states, _identity_state, _temperature_merged, combine=_temperature_merged,
            axis=x.ndim - 1, keepdims=True, dtype=np.float64, concatenate=False,
            split_every=SPLIT_EVERY, meta=meta)

    def evaluate(b):
        merged = merged_states(b)
        blocks = _row_block_delayed(merged, labels, weights)
        block_sums = dask.delayed(_temperature_state_sums, pure=True)
        parts = [block_sums(sb, lb, wb, ignore_index=ignore_index)
                 for sb, lb, wb in zip(*blocks)]
        (sums,) = dask.compute(tree_merge(parts, _sum_arrays))
        if sums[0] == 0.0:
            raise ValueError("fit_temperature: no rows to fit: every label is "
                             "ignore_index or has weight 0")
        means = tuple(float(s) for s in sums[1:] / sums[0])
        if not all(np.isfinite(m) for m in means):
            _raise_first_bad_state_row(merged, labels, weights, ignore_index, row_shape)
        return means

    return cal._newton_on_log_inverse_temperature(evaluate)


def _raise_first_bad_state_row(merged, labels, weights, ignore_index, row_shape):
    """fit_temperature's ValueError naming the first kept row whose NLL is not finite,
    from the merged class-chunk states."""
    rows = tuple(range(len(row_shape)))
    operands = [merged, rows + (len(row_shape),), labels, rows]
    operands += [weights, rows] if weights is not None else [None, None]
    bad = _rows_blockwise(
        functools.partial(_temperature_state_bad_rows, ignore_index=ignore_index), rows,
        *operands, dtype=np.bool_)
    _raise_bad_row_of(bad, row_shape)


def fit_temperature(logits, labels, *, axis=-1, kind="multiclass", ignore_index=-100,
                    sample_weight=None, method="temperature", backend=None):
    """``logitcore.fit_temperature`` of dask arrays: the same ``TemperatureFit``.

    Each Newton pass is a distributed reduction: every row block runs the
    ``temperature_nll`` kernel (multiclass) or the sigmoid sums (binary, multilabel) on
    its rows, and only six float64 sums per block travel to the caller, where the
    in-memory Newton iteration takes its step. Every pass reads the logits again: a fit
    takes ``passes`` (typically <= 8) reads of whatever ``logits`` is built from, so
    call ``logits = logits.persist()`` first when it comes from storage or an expensive
    graph and fits in the cluster's memory. The fitted temperature agrees with the
    in-memory fit to its convergence tolerance (~1e-12 relative): the sums differ from
    the in-memory ones only in the order of float64 additions.

    Class-chunked multiclass logits are never rechunked: each pass builds a per-row
    state of every class chunk at the pass's inverse temperature b (its max, the sums of
    e^{b(x - max)} weighted by 1, x, x^2, x^3, the label's logit where the chunk holds
    it), merges the states of a row in a tree under their common max (as the kernel
    merges the blocks of a row), turns each row block's merged states into its pass sums
    and sums those over the row blocks. The chunk states are float64 NumPy, not the
    compiled kernel (which needs whole rows); the fitted temperature agrees with the
    in-memory fit within 1e-9 relative (tested).

    ``method="platt"`` (``kind="binary"``) runs the in-memory Platt iteration
    (``_calibration.fit_platt_by_sums``: Newton with a line search on slope and bias);
    each of its evaluations is one distributed reduction of seven float64 sums per row
    block, any chunking of the logits.
    """
    from . import _calibration as cal

    kind = cal._check_choice(kind, "kind", cal.KINDS)
    method = cal._check_choice(method, "method", cal.METHODS)
    if method == "platt" and kind != "binary":
        raise ValueError("method='platt' needs kind='binary'")
    ignore_index = v.check_ignore_index(ignore_index)
    logits, dtype = _float_dask(logits, "logits")
    if kind != "multiclass":
        return _fit_sigmoid_temperature(logits, labels, axis, kind, ignore_index,
                                        sample_weight, method)
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis)")
    class_axis = v.single_axis(axis, logits.ndim)
    x = _moved(logits, class_axis, -1)
    row_shape, row_chunks = x.shape[:-1], x.chunks[:-1]
    n_classes = x.shape[-1]
    if n_classes == 0:
        raise ValueError(f"logits has 0 classes along axis {axis}: shape {logits.shape}")
    labels = _labels_for_rows(labels, row_shape, row_chunks, n_classes, ignore_index,
                              "labels")
    weights = _checked_sample_weight(sample_weight, row_shape, row_chunks)
    if _class_chunked(x, x.ndim - 1):
        # the weights as the in-memory fit uses them: in the logits' compute dtype
        if weights is not None:
            weights = weights.astype(dtype).astype(np.float64)
        return _fit_class_chunked_temperature(x, labels, weights, ignore_index,
                                              row_shape)
    blocks = _row_block_delayed(x, labels, weights)

    def evaluate(b):
        means = _pass_means(_temperature_block_sums, blocks, inverse_temperature=b,
                            ignore_index=ignore_index, backend=backend)
        if not all(np.isfinite(m) for m in means):
            _raise_first_bad_row(x, labels, weights, ignore_index, row_shape)
        return means

    return cal._newton_on_log_inverse_temperature(evaluate)


def _raise_first_bad_row(x, labels, weights, ignore_index, row_shape):
    """The in-memory fit's ValueError for a kept row whose NLL is not finite (computed
    only on that path)."""
    rows = tuple(range(x.ndim - 1))
    operands = [x, rows + (x.ndim - 1,), labels, rows]
    operands += [weights, rows] if weights is not None else [None, None]
    bad = _rows_blockwise(functools.partial(_bad_rows_block, ignore_index=ignore_index),
                          rows, *operands, dtype=np.bool_)
    _raise_bad_row_of(bad, row_shape)


def _raise_bad_row_of(bad, row_shape):
    """The ValueError naming the first row of the dask boolean array ``bad``."""
    flat = bad.reshape(-1)
    where = "?"
    if bool(flat.any().compute()):
        where = [int(i) for i in np.unravel_index(int(flat.argmax().compute()),
                                                   row_shape)]
    raise ValueError(
        f"logits: row {where} (kept) holds NaN or +inf, or only -inf, or -inf at its "
        f"label: its NLL is not finite at any temperature; give it label ignore_index "
        f"or weight 0 to leave it out")


def _sigmoid_block_sums(x, labels, weights, *, inverse_temperature, kind, ignore_index):
    """The sigmoid-temperature sums (weight, NLL, NLL', NLL'', limit slope) of one block
    of elements, as the in-memory binary / multilabel fit computes them."""
    from . import _calibration as cal

    x64, signs, w = _kept_sigmoid_block(x, labels, weights, kind, ignore_index)
    return cal._sigmoid_sums(signs * x64, w, inverse_temperature)


def _kept_sigmoid_block(x, labels, weights, kind, ignore_index):
    """(float64 logits, label signs, weights) of one block's kept elements (label not
    ignore_index, weight not 0), as the in-memory binary / multilabel fit keeps them."""
    from . import _calibration as cal

    flat, signs, kept = cal._sigmoid_targets(np.asarray(x), np.asarray(labels), -1, kind,
                                             ignore_index)
    w = (np.ones(flat.size) if weights is None
         else np.asarray(weights, np.float64).reshape(-1))
    kept &= w != 0
    x64 = flat.astype(np.float64)[kept]
    if not np.all(np.isfinite(x64)):
        raise ValueError("logits: a kept logit is NaN or infinite")
    return x64, signs[kept], w[kept]


def _platt_block_sums(x, labels, weights, *, slope, bias, ignore_index):
    """The seven Platt sums (``_calibration._platt_sums``) of one block of binary
    logits."""
    from . import _calibration as cal

    x64, signs, w = _kept_sigmoid_block(x, labels, weights, "binary", ignore_index)
    return cal._platt_sums(x64, signs, w, slope, bias)


def _fit_sigmoid_temperature(logits, labels, axis, kind, ignore_index, sample_weight,
                             method="temperature"):
    """Binary / multilabel temperature, and binary Platt scaling: the loss is
    elementwise, so any chunking works."""
    from . import _calibration as cal

    labels = _as_dask(labels, "labels")
    logits = cal._sigmoid_logits(logits, labels, axis, kind)
    labels = labels.rechunk(logits.chunks)
    weights = None
    if sample_weight is not None:
        weights = _checked_sample_weight(sample_weight, labels.shape, labels.chunks)
    blocks = _row_block_delayed(logits, labels, weights)
    if method == "platt":
        block_sums = dask.delayed(_platt_block_sums, pure=True)

        def platt_sums(a, c):
            parts = [block_sums(xb, lb, wb, slope=a, bias=c, ignore_index=ignore_index)
                     for xb, lb, wb in zip(*blocks)]
            (sums,) = dask.compute(tree_merge(parts, _sum_arrays))
            return sums

        return cal.fit_platt_by_sums(platt_sums)

    def evaluate(b):
        return _pass_means(_sigmoid_block_sums, blocks, inverse_temperature=b, kind=kind,
                           ignore_index=ignore_index)

    fit = cal._newton_on_log_inverse_temperature(evaluate)
    return cal.TemperatureFit(fit.temperature, fit.nll_before, fit.nll_after, fit.passes,
                              fit.converged, fit.status, kind)


# --- calibration_error, reliability ------------------------------------------------------
#
# A row block's CalibrationBins (per bin: a count and three float64 sums, O(bins) bytes)
# is made where the block's Scores lives, and the blocks' bins are merged in a tree
# (CalibrationBins.combine): counts exact, sums up to the order of float64 additions.

def _block_bins(scores, *, edges):
    """The CalibrationBins of one row block's Scores (kept rows only)."""
    from . import _calibration as cal

    confidence, correct = cal._top_label(scores, None, -1, -100, None, None)
    return cal.CalibrationBins.of(confidence, correct, edges=edges)


def _top_label_scores(logits_or_scores, labels, axis, ignore_index, temperature,
                      backend) -> DaskScores:
    """The DaskScores holding ``confidence`` and ``correct`` (and ``kept``)."""
    from . import _calibration as cal

    if isinstance(logits_or_scores, DaskScores):
        scores = logits_or_scores
        cal._check_given_scores(scores, labels, temperature)
        return scores
    if isinstance(logits_or_scores, Scores):
        raise TypeError("logitcore.dask calibration takes dask logits or a DaskScores; "
                        "for an in-memory Scores call logitcore.calibration_error")
    if labels is None:
        raise ValueError("labels are needed with logits (or pass a DaskScores from "
                         "logitcore.dask.score())")
    logits, dtype = _float_dask(logits_or_scores, "logits_or_scores")
    if temperature is not None:
        # as the in-memory call: logits / T in the logits' (compute) dtype, elementwise
        temperature = dtype.type(cal._check_temperature(temperature))
        logits = logits.astype(dtype) / temperature
    return score(logits, labels, axis=axis, ignore_index=ignore_index,
                 fields=("confidence", "correct", "kept"), backend=backend)


# --- quantile bins ----------------------------------------------------------------
#
# The in-memory quantile edges are np.quantile (linear interpolation) of every kept
# confidence: for q = k / M it reads the order statistics of ranks floor((n - 1) q) and
# the next one. On dask they are found exactly without gathering the confidences: the
# bit pattern of a float64 >= 0, read as uint64, sorts as the float does, so a histogram
# over the leading bits of the patterns tells which bin holds each needed rank. Pass 1
# counts the confidences of every block by their leading 16 bits (sign, exponent, 4 bits
# of mantissa); only the non-empty bins travel, as (key, count) pairs, merged in a tree.
# While the bins holding the needed ranks hold more than _QUANTILE_GATHER_LIMIT
# confidences, a further pass counts only the confidences in those bins by their next 8
# bits (each pass divides those bins by up to 256; at most 6 such passes: 64 bits name
# one value). The last pass gathers just the confidences in the bins holding the ranks;
# the caller sorts them, reads the order statistics and interpolates between them as
# np.quantile does.

_QUANTILE_FIRST_BITS = 16
_QUANTILE_LEVEL_BITS = 8
_QUANTILE_GATHER_LIMIT = 1 << 16


def _confidence_bits(scores):
    """The kept, non-NaN top-label confidences of one row block's Scores as float64 bit
    patterns (uint64): the order of the patterns is the order of the values."""
    from . import _calibration as cal

    confidence, _ = cal._top_label(scores, None, -1, -100, None, None)
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    # + 0.0 turns a -0.0 into 0.0, whose pattern sorts first
    confidence = confidence[~np.isnan(confidence)] + 0.0
    return confidence.view(np.uint64)


def _in_bins(bits, prefix_bits, keys):
    """The patterns of ``bits`` whose leading ``prefix_bits`` bits are in ``keys``."""
    if prefix_bits == 0:
        return bits
    return bits[np.isin(bits >> np.uint64(64 - prefix_bits), keys)]


def _block_bit_histogram(scores, *, prefix_bits, keys, width):
    """(keys, counts) of the non-empty bins of the leading ``prefix_bits`` + ``width``
    bits, of one block's confidences in the bins ``keys`` of the leading ``prefix_bits``
    bits."""
    bits = _in_bins(_confidence_bits(scores), prefix_bits, keys)
    shift = np.uint64(64 - prefix_bits - width)
    found, counts = np.unique(bits >> shift, return_counts=True)
    return found, counts.astype(np.int64)


def _merge_bit_histograms(parts):
    keys = np.concatenate([part[0] for part in parts])
    counts = np.concatenate([part[1] for part in parts])
    merged, where = np.unique(keys, return_inverse=True)
    totals = np.zeros(merged.size, np.int64)
    np.add.at(totals, where, counts)
    return merged, totals


def _block_bin_members(scores, *, prefix_bits, keys):
    return _in_bins(_confidence_bits(scores), prefix_bits, keys)


def _merge_members(parts):
    return np.concatenate(parts)


def _quantile_ranks(n, n_bins):
    """np.quantile's linear interpolation for q = linspace(0, 1, n_bins + 1) of n values:
    (lower rank, upper rank, weight) per q, computed as numpy computes them."""
    virtual = (n - 1) * np.linspace(0.0, 1.0, n_bins + 1)
    lower = np.floor(virtual)
    at_end = virtual >= n - 1  # numpy takes the last value there (lower = upper = -1)
    upper = np.where(at_end, n - 1, lower + 1).astype(np.int64)
    gamma = virtual - np.where(at_end, -1.0, lower)
    lower = np.where(at_end, n - 1, lower).astype(np.int64)
    return lower, upper, gamma


def _lerp_as_numpy(a, b, t):
    """numpy's _lerp (np.quantile's interpolation), bit for bit: a + (b - a) t, or
    b - (b - a)(1 - t) where t >= 0.5."""
    diff = b - a
    result = a + diff * t
    return np.where(t >= 0.5, b - diff * (1.0 - t), result)


def _exact_quantile_edges(blocks, n_bins):
    """``_calibration._quantile_edges`` of the confidences of the row blocks ``blocks``
    (dask.delayed Scores), bit for bit, from histograms of the confidences' bit patterns
    and the confidences of the few bins holding the needed order statistics."""
    from . import _calibration as cal

    histogram = dask.delayed(_block_bit_histogram, pure=True)
    prefix_bits, keys, width = 0, np.zeros(1, np.uint64), _QUANTILE_FIRST_BITS
    (found, counts), = dask.compute(tree_merge(
        [histogram(block, prefix_bits=0, keys=keys, width=width) for block in blocks],
        _merge_bit_histograms))
    n = int(counts.sum())
    if n == 0:
        return cal.uniform_edges(n_bins)
    lower, upper, gamma = _quantile_ranks(n, n_bins)
    inner = slice(1, n_bins)  # the outer edges are 0 and 1
    ranks = np.unique(np.concatenate([lower[inner], upper[inner]]))
    if not ranks.size:  # one bin: no inner edge
        return cal.uniform_edges(n_bins)
    # each needed rank: the key of the bin holding it and its offset within that bin
    rank_keys = np.zeros(ranks.size, np.uint64)
    offsets = ranks.copy()
    while True:
        parents = found >> np.uint64(width)
        for i, (key, offset) in enumerate(zip(rank_keys, offsets)):
            in_parent = parents == key
            sub_keys, sub_counts = found[in_parent], counts[in_parent]
            below = np.cumsum(sub_counts)
            j = int(np.searchsorted(below, offset, side="right"))
            rank_keys[i] = sub_keys[j]
            offsets[i] = offset - (below[j] - sub_counts[j])
        prefix_bits += width
        keys = np.unique(rank_keys)
        held = int(counts[np.isin(found, keys)].sum())
        if prefix_bits == 64 or held <= _QUANTILE_GATHER_LIMIT:
            break
        width = _QUANTILE_LEVEL_BITS
        (found, counts), = dask.compute(tree_merge(
            [histogram(block, prefix_bits=prefix_bits, keys=keys, width=width)
             for block in blocks], _merge_bit_histograms))
    if prefix_bits == 64:  # each key is one value
        values = rank_keys.view(np.float64)
    else:
        members = dask.delayed(_block_bin_members, pure=True)
        (gathered,) = dask.compute(tree_merge(
            [members(block, prefix_bits=prefix_bits, keys=keys) for block in blocks],
            _merge_members))
        gathered = np.sort(gathered)
        gathered_keys = gathered >> np.uint64(64 - prefix_bits)
        starts = np.searchsorted(gathered_keys, rank_keys, side="left")
        values = gathered[starts + offsets].view(np.float64)
    by_rank = dict(zip(ranks.tolist(), values.tolist()))
    edges = np.zeros(n_bins + 1)
    a = np.array([by_rank[r] for r in lower[inner].tolist()], np.float64)
    b = np.array([by_rank[r] for r in upper[inner].tolist()], np.float64)
    edges[inner] = _lerp_as_numpy(a, b, gamma[inner])
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def reliability(logits_or_scores, labels=None, *, n_bins=15, binning="uniform", axis=-1,
                ignore_index=-100, temperature=None, backend=None):
    """``logitcore.reliability`` of dask logits (with dask or in-memory ``labels``) or of
    a :class:`DaskScores` holding ``confidence`` and ``correct``: a lazy
    ``CalibrationBins`` (``dask.delayed``; ``.compute()`` it).

    Each row block's bins are made where the block is scored, and only the bins (a count
    and three float64 sums per bin) travel, merged in a tree: counts equal the in-memory
    ones exactly, the sums up to the order of float64 additions. Row- and class-chunked
    logits both work (class chunks go through ``score``'s merged states: the confidences
    within 1 ulp of the in-memory ones, so a confidence within an ulp of a bin edge may
    change bin).

    ``binning="quantile"``: the edges are exactly the in-memory ones (np.quantile of the
    kept confidences, bit for bit) without gathering the confidences: histograms of the
    confidences' float64 bit patterns find the bins holding the order statistics
    np.quantile reads, and only the confidences of those bins are gathered (see the
    comment above ``_exact_quantile_edges``). These passes run when ``reliability`` is
    called (typically two histogram passes and one gather, each scoring the blocks
    again unless the logits are persisted); the bins themselves stay lazy.
    """
    from . import _calibration as cal

    cal._check_choice(binning, "binning", cal.BINNINGS)
    edges = cal.uniform_edges(n_bins)
    scores = _top_label_scores(logits_or_scores, labels, axis, ignore_index, temperature,
                               backend)
    blocks = list(scores._blocks.to_delayed().ravel())
    if binning == "quantile":
        edges = _exact_quantile_edges(blocks, n_bins)
    bins = [dask.delayed(_block_bins, pure=True)(block, edges=edges) for block in blocks]
    return tree_merge(bins, cal.CalibrationBins.combine)


def _classwise_block_bins(x, labels, *, edges, ignore_index, temperature, backend):
    from . import _calibration as cal

    return _on_task_threads(cal._classwise_states)(x, labels, -1, ignore_index,
                                                    temperature, edges, backend)


def _merge_classwise(parts):
    from . import _calibration as cal

    return [cal.CalibrationBins.combine(states) for states in zip(*parts)]


def calibration_error(logits_or_scores, labels=None, *, n_bins=15, binning="uniform",
                      norm="l1", mode="top-label", axis=-1, ignore_index=-100,
                      temperature=None, backend=None):
    """``logitcore.calibration_error`` of dask logits or a :class:`DaskScores`, lazily (a
    ``dask.delayed`` float; ``.compute()`` it): a tree reduction of per-block
    ``CalibrationBins`` (see ``reliability``), equal to the in-memory figure up to the
    order of float64 additions (relative 1e-12 or better).

    ``mode="classwise"`` needs logits whose class axis is one chunk (each block bins
    every class's probability of its rows; one CalibrationBins per class travels per
    block). ``binning="quantile"`` (top-label): the in-memory quantile edges exactly,
    computed when called (see ``reliability``); classwise takes uniform bins only, as in
    memory.
    """
    from . import _calibration as cal

    cal._check_choice(mode, "mode", cal.MODES)
    cal._check_choice(norm, "norm", cal.NORMS)
    if mode == "top-label":
        return dask.delayed(cal.CalibrationBins.error, pure=True)(
            reliability(logits_or_scores, labels, n_bins=n_bins, binning=binning,
                        axis=axis, ignore_index=ignore_index, temperature=temperature,
                        backend=backend), norm)
    if isinstance(logits_or_scores, (Scores, DaskScores)):
        raise ValueError("mode='classwise' needs the logits (every class's probability), "
                         "not a Scores")
    if labels is None:
        raise ValueError("labels are needed with logits")
    cal._check_choice(binning, "binning", cal.BINNINGS)
    if binning == "quantile":
        raise ValueError("mode='classwise' supports binning='uniform' only")
    edges = cal.uniform_edges(n_bins)
    if temperature is not None:
        cal._check_temperature(temperature)
    logits, dtype = _float_dask(logits_or_scores, "logits_or_scores")
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis)")
    class_axis = v.single_axis(axis, logits.ndim)
    if _class_chunked(logits, class_axis):
        raise ValueError(
            f"calibration_error(mode='classwise') needs whole rows: logits has "
            f"{logits.numblocks[class_axis]} chunks along the class axis {axis}; rechunk "
            f"it into one, e.g. logits.rechunk({{{class_axis}: -1}}), or use "
            f"mode='top-label'")
    x = _moved(logits, class_axis, -1)
    label_array = _labels_for_rows(labels, x.shape[:-1], x.chunks[:-1], x.shape[-1],
                                   ignore_index, "labels")
    x_blocks, label_blocks = _row_block_delayed(x, label_array)
    block_bins = dask.delayed(_classwise_block_bins, pure=True)
    parts = [block_bins(xb, lb, edges=edges, ignore_index=ignore_index,
                        temperature=temperature, backend=backend)
             for xb, lb in zip(x_blocks, label_blocks)]
    return dask.delayed(_classwise_error, pure=True)(tree_merge(parts, _merge_classwise),
                                                     norm)


def _classwise_error(states, norm):
    return float(np.mean([state.error(norm) for state in states]))


# --- tune_thresholds ---------------------------------------------------------------------
#
# The in-memory tuning's two reads, each a distributed reduction: pass 1 merges the row
# blocks' ThresholdHistograms (counts per class, label and bin: O(classes x bins) bytes
# per block, exact); the caller picks the bins that can hold the optimum; pass 2 merges
# the blocks' Candidates (the samples of those bins only, in row order) and the caller
# resolves them exactly. Classes are independent, so class chunks are tuned one class
# chunk at a time within the same two passes and their results concatenated.

def _block_histogram(x, labels, weights, *, kind, backend):
    from . import _thresholds as th

    return _on_task_threads(th.histogram)(x, labels, kind=kind, sample_weight=weights,
                                           backend=backend)


def _block_candidates(x, labels, weights, keep, *, kind, backend):
    from . import _thresholds as th

    return _on_task_threads(th.gather)(x, labels, keep, kind=kind, sample_weight=weights,
                                        backend=backend)


def _merge_histograms(parts):
    return functools.reduce(lambda a, b: a.merge(b), parts)


def _merge_candidates(parts):
    return functools.reduce(lambda a, b: a.merge(b), parts)


def tune_thresholds(logits, labels, *, kind="binary", metric="f1", beta=1.0,
                    min_precision=None, min_recall=None, sample_weight=None,
                    backend=None):
    """``logitcore.tune_thresholds`` of dask arrays: the same exact ``Thresholds``,
    computed (not lazy: the second pass depends on the first's result).

    Two reads of the logits, as in memory: pass 1 is a tree merge of the row blocks'
    histograms (exact integer counts), pass 2 a merge of the samples of the few bins that
    can hold each class's optimum, which the caller scans exactly. The thresholds, counts
    and metric values are those of the in-memory call (with ``sample_weight`` the
    weighted counts are float64 sums in another order: equal up to float64 rounding).
    Both passes read ``logits`` again: persist it first if it comes from storage.
    Row and class chunks both work (classes are tuned independently).
    """
    from . import _thresholds as th

    kind = th._check_kind(kind)
    objective = th._check_objective(metric, beta, min_precision, min_recall)
    backend = th._check_backend(backend)
    x, dtype = _float_dask(logits, "logits")
    y = _as_dask(labels, "labels")
    if kind == "binary":
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError(f"logits for kind='binary' must have shape (n,) or (n, 1), "
                             f"got shape {x.shape} (kind='multilabel' takes (n, classes))")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        x, y = x[:, None], y[:, None]
    elif x.ndim != 2:
        raise ValueError(f"logits for kind='multilabel' must have shape (n, classes), got "
                         f"shape {x.shape}")
    if y.shape != x.shape:
        expected = x.shape if kind == "multilabel" else (x.shape[0],)
        raise ValueError(f"labels must have shape {expected} (0 / 1 per logit), got "
                         f"shape {tuple(np.shape(labels))}")
    if y.dtype.kind not in "iub":
        raise TypeError(f"labels must be bool or integer 0 / 1, got dtype {y.dtype}")
    y = y.rechunk(x.chunks)
    weights = _checked_sample_weight(sample_weight, x.shape[:1], x.chunks[:1])
    # one group of row blocks per class chunk (multilabel, kind='multilabel' in blocks)
    groups = []
    for j in range(x.numblocks[1]):
        x_blocks = list(x.blocks[:, j].to_delayed().ravel())
        y_blocks = list(y.blocks[:, j].to_delayed().ravel())
        w_blocks = (list(weights.to_delayed().ravel()) if weights is not None
                    else [None] * len(x_blocks))
        groups.append((x_blocks, y_blocks, w_blocks))
    histogram = dask.delayed(_block_histogram, pure=True)
    histograms = dask.compute(*[
        tree_merge([histogram(xb, yb, wb, kind="multilabel", backend=backend)
                    for xb, yb, wb in zip(*group)], _merge_histograms)
        for group in groups])
    keeps = [th.bins_to_resolve(hist, objective) for hist in histograms]
    gather = dask.delayed(_block_candidates, pure=True)
    candidates = dask.compute(*[
        tree_merge([gather(xb, yb, wb, keep, kind="multilabel", backend=backend)
                    for xb, yb, wb in zip(*group)], _merge_candidates)
        # the (classes, bins) mask goes into the graph once, not once per block
        for group, keep in zip(groups, map(dask.delayed, keeps))])
    parts = [th.resolve(hist, found, objective, dtype)
             for hist, found in zip(histograms, candidates)]
    fields = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    fields["probability"] = th._probability_below(fields["logit"], dtype)
    if weights is None:
        for name in ("tp", "fp", "fn", "tn"):
            fields[name] = fields[name].astype(np.int64)
    return th.Thresholds(kind=kind, metric=metric, fields=fields)
