"""Batch scoring: ``logitcore.score``, its per-row fields (``Scores``) and the mergeable
dataset figures (``Summary``).

``score`` validates and lays out the logits as ``_ops`` does, then makes ONE kernel call
(op table: ``score_multiclass``, ``score_binary``, ``score_multilabel``) that writes every
requested per-row field; a field that was not requested is handed to the kernel as an
empty array and neither computed nor allocated. Everything after the kernel reads the
per-row fields and the labels, never the logits.

Edge rows, per field (multiclass; the probability fields follow the softmax table of the
README, the order fields - ``pred``, ``top_k_indices``, ``label_rank``, ``correct`` - the
order of the logits, ties to the lower class index):

=====================  ========  ===========  ==========  =============  =================
field                  NaN row   +inf (once)  all -inf    some -inf      C = 1
=====================  ========  ===========  ==========  =============  =================
pred                   -1        the +inf     0           as usual       0
max_logit              NaN       +inf         -inf        finite         x
confidence             NaN       NaN          NaN         as usual       1.0
margin                 NaN       NaN          NaN         as usual       1.0
logit_margin           NaN       +inf         NaN         as usual       +inf
entropy                NaN       NaN          NaN         -inf terms 0   0.0
logsumexp              NaN       +inf         -inf        finite         x
top_k_indices          all -1    by logit     0, 1, ...   -inf last      [0]
top_k_probs            NaN       NaN          NaN         0.0 there      [1.0]
label_logprob, loss    NaN       NaN          NaN         -inf / +inf    0.0
                                                          at a -inf label
correct                False     pred == y    y == 0      pred == y      True
label_rank             0         1 + #larger  1           1 + #larger    1
brier                  NaN       NaN          NaN         as usual       0.0
=====================  ========  ===========  ==========  =============  =================

A row whose label is ``ignore_index`` has ``kept`` False, ``label_logprob = loss =
brier = 0``, ``correct`` False and ``label_rank`` 0 (ranks start at 1). Binary and
multilabel rows: a NaN logit gives NaN probabilities and losses, is never predicted and
never ``correct``; a +-inf logit has probability exactly 1 or 0. An input with no rows
gives empty fields; a class axis of length 0 is an error.
"""

from __future__ import annotations

import math
import operator
import numpy as np

from . import _config
from . import _ops
from . import _validate as v
from ._calibration import CalibrationBins, merge_in_order
from ._backends import op_table

KINDS = ("multiclass", "binary", "multilabel")

_KERNEL_OF_KIND = {"multiclass": "score_multiclass", "binary": "score_binary",
                   "multilabel": "score_multilabel"}
# Output roles of the score kernels: the shape of an asked output from (items, classes,
# top_k) and its dtype (None: the logits' float dtype). Empty outputs have as many axes.
_OUTPUT_ROLES = {
    "field_out": (lambda n, c, k: (n,), None),
    "index_field_out": (lambda n, c, k: (n,), np.dtype(np.int64)),
    "flag_field_out": (lambda n, c, k: (n,), np.dtype(np.bool_)),
    "top_k_out": (lambda n, c, k: (n, k), None),
    "top_k_index_out": (lambda n, c, k: (n, k), np.dtype(np.int64)),
    "flags_out": (lambda n, c, k: (n, c), np.dtype(np.bool_)),
}
# The fields that need labels. ``kept`` (label != ignore_index) comes from the labels
# alone; every other field is an output ``<field>_out`` of the kind's kernel.
_LABEL_FIELDS = {
    "multiclass": ("label_logprob", "loss", "correct", "label_rank", "brier", "kept"),
    "binary": ("loss", "correct", "brier", "kept"),
    "multilabel": ("loss", "exact_match", "true_positives", "false_positives",
                   "false_negatives"),
}
_TOP_K_FIELDS = ("top_k_indices", "top_k_probs")
# Fields with a class axis (rows x classes), computed only when named in ``fields=``.
_ONLY_WHEN_ASKED = {"multilabel": ("pred",)}


def _field_names(kind: str) -> tuple[str, ...]:
    """The kind's fields in output order: its kernel's outputs, then ``kept``."""
    kernel = op_table.KERNELS[_KERNEL_OF_KIND[kind]]
    names = tuple(name[:-len("_out")] for name, role in kernel.arguments
                  if role in _OUTPUT_ROLES)
    return names + tuple(name for name in _LABEL_FIELDS[kind] if name not in names)


# --- validation -----------------------------------------------------------------------

def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return kind


def _check_top_k(top_k, kind: str, n_classes: int) -> int:
    if isinstance(top_k, bool):
        raise TypeError(f"top_k must be an int, got {top_k!r}")
    try:
        top_k = operator.index(top_k)
    except TypeError:
        raise TypeError(f"top_k must be an int, got {top_k!r}") from None
    if top_k and kind != "multiclass":
        raise ValueError(f"top_k is for kind='multiclass', got top_k={top_k} with "
                         f"kind={kind!r}")
    if not 0 <= top_k <= n_classes:
        raise ValueError(f"top_k must be in [0, {n_classes}] (the number of classes), "
                         f"got {top_k}")
    return top_k


def _check_threshold(threshold, kind: str, n_classes: int, dtype):
    """A float in (0, 1); for multilabel a (C,) vector of the logits' dtype."""
    if isinstance(threshold, (bool, np.bool_)):
        raise TypeError(f"threshold must be a number in (0, 1), got {threshold!r}")
    values = np.asarray(threshold)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"threshold must be a number in (0, 1), got dtype {values.dtype}")
    if values.ndim == 1 and kind == "multilabel":
        if values.shape != (n_classes,):
            raise ValueError(f"threshold must be a scalar or have shape ({n_classes},) "
                             f"(one per class), got shape {values.shape}")
    elif values.ndim != 0:
        expected = "a scalar or one per class" if kind == "multilabel" else "a scalar"
        raise ValueError(f"threshold must be {expected}, got shape {values.shape}")
    if not np.all((values > 0) & (values < 1)):  # NaN fails too
        raise ValueError(f"threshold must be in (0, 1) (open interval), got {threshold!r}")
    if kind == "multilabel":
        return np.ascontiguousarray(np.broadcast_to(values, (n_classes,)), dtype=dtype)
    return float(values)


def _check_fields(fields, kind: str, has_labels: bool, top_k: int) -> tuple[str, ...]:
    """The requested field names in output order (all that apply when ``fields`` is None)."""
    known = _field_names(kind)
    label_fields = _LABEL_FIELDS[kind]
    if fields is None:
        return tuple(
            name for name in known
            if (has_labels or name not in label_fields)
            and (top_k or name not in _TOP_K_FIELDS)
            and name not in _ONLY_WHEN_ASKED.get(kind, ()))
    if isinstance(fields, str):
        fields = (fields,)
    try:
        asked = set(fields)
    except TypeError:
        raise TypeError(f"fields must be None or a list of field names, got {fields!r}") \
            from None
    for name in asked:
        if name not in known:
            raise ValueError(f"fields: {name!r} is not a field of kind={kind!r}; the "
                             f"fields are {', '.join(known)}")
        if name in label_fields and not has_labels:
            raise ValueError(f"fields: {name!r} needs labels, and labels is None")
        if name in _TOP_K_FIELDS and not top_k:
            raise ValueError(f"fields: {name!r} needs top_k > 0")
    return tuple(name for name in known if name in asked)


def _integer_labels(labels, row_shape: tuple, kind: str, n_label_classes: int,
                    ignore_index: int, backend):
    """Class labels with the per-row shape, as flat int64 (range checked by the
    label_stats kernel: IndexError as cross_entropy), and the kept-row mask."""
    labels = np.asarray(labels)
    if labels.shape != row_shape:
        raise ValueError(f"labels must have shape {row_shape} (one per row of logits), "
                         f"got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels for kind={kind!r} must be integer class indices, got "
                        f"dtype {labels.dtype}")
    flat, _ = _ops._labels_in_range(labels, "labels", "score", ignore_index,
                                    _ops._ones(n_label_classes, np.dtype(np.float64)),
                                    backend)
    return flat, flat != ignore_index


def _check_temperature(temperature, row_shape: tuple, dtype):
    """None, or the temperature in the logits' dtype: a scalar, or (for one value per
    row) a flat array of the rows' count. Every value must be finite and > 0 in that
    dtype (a float64 T that a float32 call would round to 0 or inf is refused)."""
    if temperature is None:
        return None
    if isinstance(temperature, (bool, np.bool_)):
        raise TypeError(f"temperature must be a positive number or one per row, got "
                        f"{temperature!r}")
    values = np.asarray(temperature)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"temperature must be a positive number or one per row, got "
                        f"dtype {values.dtype}")
    if values.ndim and values.shape != row_shape:
        raise ValueError(f"temperature must be a scalar or have shape {row_shape} (one "
                         f"per row of logits), got shape {values.shape}")
    values = values.astype(dtype)
    if not np.all(np.isfinite(values) & (values > 0)):
        bad = values.reshape(-1)[~(np.isfinite(values) & (values > 0)).reshape(-1)][0]
        raise ValueError(f"temperature must be finite and > 0 (in {dtype}), got "
                         f"{temperature if values.ndim == 0 else bad}")
    return values[()] if values.ndim == 0 else values.reshape(-1)


def _multilabel_targets(labels, logits_shape: tuple, axes: tuple) -> np.ndarray:
    """A 0/1 label matrix with the logits' shape as (rows, classes) uint8."""
    labels = np.asarray(labels)
    if labels.shape != logits_shape:
        raise ValueError(f"labels for kind='multilabel' must have the shape of logits "
                         f"{logits_shape} (0 / 1 per class), got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels for kind='multilabel' must be bool or integer 0 / 1, got "
                        f"dtype {labels.dtype}")
    if labels.dtype.kind != "b" and labels.size and not np.all((labels == 0) | (labels == 1)):
        bad = tuple(int(i) for i in np.argwhere((labels != 0) & (labels != 1))[0])
        raise ValueError(f"labels for kind='multilabel' must be 0 or 1, got "
                         f"labels{list(bad)} = {labels[bad]}")
    return _ops._as_rows(labels.astype(np.uint8, copy=False), axes)


# --- the kernel call --------------------------------------------------------------------

# Rows scaled by 1 / temperature at a time (see _run_scaled): a buffer this size stays
# in the L2 cache between its division and the kernel's read.
SCALE_CHUNK_ELEMENTS = 1 << 18


def _run_kernel(kind, backend, inputs: dict, wanted, n_items, n_classes, top_k, dtype,
                temperature=None):
    """Call the kind's kernel with ``inputs`` (by argument name) and an output per
    requested field (argument ``<field>_out``); returns {field: array}. With a
    ``temperature`` the kernel scores x / temperature (``_run_scaled``)."""
    kernel = op_table.KERNELS[_KERNEL_OF_KIND[kind]]
    args, results = [], {}
    for name, role in kernel.arguments:
        if name in inputs:
            args.append(inputs[name])
            continue
        shape_of, out_dtype = _OUTPUT_ROLES[role]
        shape = shape_of(n_items, n_classes, top_k)
        out_dtype = out_dtype or dtype
        field_name = name[:-len("_out")]
        if field_name in wanted:
            output = results[field_name] = np.empty(shape, out_dtype)
        else:
            output = np.empty((0,) * len(shape), out_dtype)
        # Kernels write flags as uint8 0 / 1: a bool array's own bytes.
        args.append(output.view(np.uint8) if out_dtype == np.bool_ else output)
    if temperature is None:
        _ops._run(kernel.name, "score", backend, *args)
    else:
        _run_scaled(kernel, backend, args, temperature)
    return results


# Argument roles with one entry (or row) per item: cut with the rows of x when they are
# not empty. Every other argument (scalars, per-class thresholds) is the same per chunk.
_PER_ITEM_ROLES = frozenset(_OUTPUT_ROLES) | {"rows", "flat", "labels_or_empty",
                                               "flags_or_empty"}


def _run_scaled(kernel, backend, args: list, temperature) -> None:
    """The kernel on x / temperature, SCALE_CHUNK_ELEMENTS at a time: each chunk of rows
    is divided into one reused buffer (in the logits' dtype, as ``logits / T`` is in
    NumPy and torch) and scored with the slices of the per-row operands, so no scaled
    copy of the logits is made. Rows are independent, so the fields are those of one
    call on x / temperature, whatever the chunking."""
    x = args[0]
    # resolved once, so that "auto" picks the backend of the whole call for every chunk
    backend, _ = _config.resolve(kernel.name, backend, x.size)
    n_items = x.shape[0]
    row_size = x.size // n_items if n_items else 1
    chunk_items = max(1, SCALE_CHUNK_ELEMENTS // max(row_size, 1))
    buffer = np.empty((min(chunk_items, n_items),) + x.shape[1:], x.dtype)
    per_row = np.ndim(temperature) > 0
    for start in range(0, n_items, chunk_items):
        stop = min(start + chunk_items, n_items)
        divisor = temperature[start:stop] if per_row else temperature
        if per_row and x.ndim == 2:
            divisor = divisor[:, None]
        scaled = np.divide(x[start:stop], divisor, out=buffer[:stop - start])
        chunk_args = [scaled] + [
            arg[start:stop] if role in _PER_ITEM_ROLES and np.size(arg) else arg
            for arg, (_, role) in zip(args[1:], kernel.arguments[1:])]
        _ops._run(kernel.name, "score", backend, *chunk_args)


# --- the public function ---------------------------------------------------------------

def score(logits, labels=None, *, axis=-1, kind="multiclass", top_k=0, threshold=0.5,
          ignore_index=-100, fields=None, temperature=None, backend=None) -> Scores:
    """Every per-row figure read from logits, in one pass over them.

    ``kind="multiclass"``: softmax over the class axis ``axis``. Fields per row:
    ``pred`` (argmax, int64, ties to the lowest index), ``max_logit``, ``confidence``
    (max probability), ``margin`` (top-1 minus top-2 probability), ``logit_margin``
    (top-1 minus top-2 logit), ``entropy`` (nats), ``logsumexp``; with ``top_k=k``
    ``top_k_indices`` (rows x k, by descending probability, ties to the lower index) and
    ``top_k_probs``; with integer ``labels``: ``label_logprob``, ``loss``
    (= -label_logprob), ``correct``, ``label_rank`` (1 + the number of classes with a
    strictly larger logit), ``brier`` (sum over classes of (p - onehot)^2) and ``kept``
    (label != ignore_index).

    ``kind="binary"``: one logit per row, shape (n,) or with ``axis`` of length 1:
    ``prob``, ``pred`` (prob >= threshold), ``confidence`` (max(p, 1 - p)), ``entropy``;
    with labels 0 / 1 (or ignore_index): ``loss`` (BCE), ``correct``, ``brier``, ``kept``.

    ``kind="multilabel"``: independent sigmoids per class, ``threshold`` a scalar or one
    per class: ``n_predicted``; with a 0 / 1 label matrix of the logits' shape: ``loss``
    (mean BCE over classes), ``exact_match``, ``true_positives``, ``false_positives``,
    ``false_negatives``; the predicted matrix ``pred`` only when named in ``fields``.

    ``threshold`` is for binary and multilabel scores (a probability in (0, 1)).
    ``temperature``: a number > 0 or one per row (the leading shape of the logits);
    every field is then that of ``logits / temperature`` (divided in the logits' dtype,
    as NumPy and torch divide): the probabilities, entropy, loss, ``logsumexp`` and
    also ``max_logit`` and ``logit_margin``, which are the scaled logits' (times T they
    are the raw ones, up to rounding). The orders
    (``pred``, ``top_k_indices``, ``label_rank``) are those of the scaled logits, which
    equal the raw ones but where the division rounds two logits together. The logits are
    scaled a cache-sized chunk of rows at a time; no scaled copy is made.
    Float fields have the logits' dtype (float32 or float64; half precision and integers
    as everywhere in logitcore). Every field keeps the leading shape of the logits
    ((batch, seq, vocab) logits give (batch, seq) fields). ``fields=`` names the fields to
    compute; nothing else is computed or allocated. Edge rows: see the table in the
    README ("Scoring a batch").

    >>> import numpy as np, logitcore
    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    >>> s = logitcore.score(logits, np.array([0, 1]), top_k=2)
    >>> s.pred, s.correct, s.label_rank
    (array([0, 2]), array([ True, False]), array([1, 2]))
    >>> s.top_k_indices
    array([[0, 1],
           [2, 1]])
    >>> s.loss.round(4)
    array([0.2395, 2.1698])
    >>> s.summary()["accuracy"]
    0.5
    """
    kind = _check_kind(kind)
    original_shape = np.shape(logits)
    logits = v.as_float_array(logits, "logits")
    ignore_index = v.check_ignore_index(ignore_index)
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension, got a 0-d array")
    if kind == "binary" and logits.ndim == 1:
        row_shape, n_classes = logits.shape, 1
    else:
        class_axis = v.single_axis(axis, logits.ndim)
        n_classes = logits.shape[class_axis]
        row_shape = logits.shape[:class_axis] + logits.shape[class_axis + 1:]
        if kind == "binary" and n_classes != 1:
            raise ValueError(
                f"kind='binary' takes one logit per row: shape (n,) or axis {axis} of "
                f"length 1, got logits of shape {original_shape} (kind='multilabel' "
                f"scores several independent logits per row)")
    if n_classes == 0:
        raise ValueError(f"logits has 0 classes along axis {axis}: shape {logits.shape}")
    top_k = _check_top_k(top_k, kind, n_classes)
    threshold = _check_threshold(threshold, kind, n_classes, logits.dtype)
    has_labels = labels is not None
    wanted = _check_fields(fields, kind, has_labels, top_k)
    temperature = _check_temperature(temperature, row_shape, logits.dtype)
    n_items = math.prod(row_shape)
    flat_labels = kept = None  # class labels as flat int64 and the kept rows, if given

    if kind == "multilabel":
        axes = (class_axis,)
        targets = (_multilabel_targets(labels, logits.shape, axes) if has_labels
                   else np.empty((0, 0), np.uint8))
        inputs = {"x": _ops._as_rows(logits, axes), "targets": targets,
                  "threshold": threshold}
        results = _run_kernel(kind, backend, inputs, wanted, n_items, n_classes, 0,
                              logits.dtype, temperature)
        if "pred" in results:  # rows x classes, back in the caller's layout
            results["pred"] = _ops._from_rows(results["pred"], logits, axes)
    else:
        if has_labels:
            n_label_classes = 2 if kind == "binary" else n_classes
            flat_labels, kept = _integer_labels(labels, row_shape, kind, n_label_classes,
                                                ignore_index, backend)
        inputs = {"labels": np.empty(0, np.int64) if flat_labels is None else flat_labels,
                  "ignore_index": ignore_index}
        if kind == "binary":
            inputs.update(x=np.ascontiguousarray(logits).reshape(-1), threshold=threshold)
        else:
            inputs.update(x=_ops._as_rows(logits, (class_axis,)), top_k=top_k)
        results = _run_kernel(kind, backend, inputs, wanted, n_items, n_classes, top_k,
                              logits.dtype, temperature)
        if "kept" in wanted:
            results["kept"] = kept
    for name in results:
        if name != "pred" or kind != "multilabel":
            results[name] = results[name].reshape(row_shape + results[name].shape[1:])
    return Scores(
        kind=kind, fields={name: results[name] for name in wanted}, row_shape=row_shape,
        n_classes=n_classes, top_k=top_k,
        labels=None if flat_labels is None else flat_labels.reshape(row_shape),
        kept=None if kept is None else kept.reshape(row_shape))


# --- results --------------------------------------------------------------------------

def _missing_extra(method: str, module: str, extra: str) -> ImportError:
    return ImportError(f"Scores.{method}() needs {module}, which is not installed: "
                       f"pip install 'logitcore[{extra}]'")


class Scores:
    """The per-row fields of one ``score`` call, by name: ``scores.pred``,
    ``scores["loss"]``; ``fields`` lists what was computed. Each field has the leading
    shape of the logits (``row_shape``), 2-D fields one more axis (k or classes)."""

    def __init__(self, *, kind, fields, row_shape, n_classes, top_k, labels, kept):
        self.kind = kind
        self._fields = fields
        self.row_shape = tuple(row_shape)
        self.n_classes = n_classes
        self.top_k = top_k
        self._labels = labels  # class labels (multiclass / binary), for top-k accuracy
        self._kept = kept      # rows whose label is not ignore_index (None: no labels)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._fields)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._fields[name]
        except KeyError:
            raise KeyError(f"{name!r} was not computed; the fields are "
                           f"{', '.join(self._fields) or 'none'}") from None

    def __getattr__(self, name: str) -> np.ndarray:
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"Scores has no field {name!r}; the fields are "
                             f"{', '.join(fields) or 'none'}")

    def __contains__(self, name) -> bool:
        return name in self._fields

    def __repr__(self) -> str:
        return (f"Scores(kind={self.kind!r}, rows={self.row_shape}, "
                f"fields={list(self._fields)})")

    def to_dict(self) -> dict[str, np.ndarray]:
        """The fields as a dict of arrays (the arrays themselves, not copies)."""
        return dict(self._fields)

    def _columns(self) -> dict[str, np.ndarray]:
        """One 1-D column per field, rows in C order; a 2-D field gives a column per
        index: ``top_k_indices_0``, ``top_k_indices_1``, ... (``pred_<class>`` for the
        multilabel matrix)."""
        n_items = math.prod(self.row_shape)
        columns = {}
        for name, values in self._fields.items():
            per_row = values.reshape(n_items, -1) if values.ndim > len(self.row_shape) \
                else values.reshape(n_items)
            if per_row.ndim == 1:
                columns[name] = per_row
            else:
                for j in range(per_row.shape[1]):
                    columns[f"{name}_{j}"] = per_row[:, j]
        return columns

    def to_pandas(self):
        """A pandas DataFrame, one row per scored row (see ``_columns`` for 2-D fields)."""
        try:
            import pandas
        except ImportError:
            raise _missing_extra("to_pandas", "pandas", "pandas") from None
        return pandas.DataFrame(self._columns())

    def to_arrow(self):
        """A pyarrow Table with the columns of ``to_pandas``."""
        try:
            import pyarrow
        except ImportError:
            raise _missing_extra("to_arrow", "pyarrow", "arrow") from None
        return pyarrow.table(self._columns())

    def sequences(self) -> dict[str, np.ndarray]:
        """Reductions over the last leading axis (the sequence of (batch, seq, vocab)
        logits), the figures lm-evaluation-harness reads, over the kept tokens:
        ``logprob`` (summed label log-probability), ``n_tokens`` (kept tokens),
        ``perplexity`` (exp(-logprob / n_tokens), NaN without kept tokens) and
        ``all_greedy`` (every kept token is the argmax). Needs multiclass fields
        ``label_logprob`` and ``correct``."""
        if self.kind != "multiclass" or self._kept is None:
            raise ValueError("sequences() needs kind='multiclass' scores with labels")
        for name in ("label_logprob", "correct"):
            if name not in self._fields:
                raise ValueError(f"sequences() needs the field {name!r}; score() was "
                                 f"called without it in fields")
        if not self.row_shape:
            raise ValueError("sequences() needs logits with a sequence axis")
        logprob = np.add.reduce(self._fields["label_logprob"], axis=-1, dtype=np.float64)
        n_tokens = np.count_nonzero(self._kept, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            perplexity = np.exp(-logprob / n_tokens)
        all_greedy = np.all(self._fields["correct"] | ~self._kept, axis=-1)
        return {"logprob": logprob, "n_tokens": n_tokens, "perplexity": perplexity,
                "all_greedy": all_greedy}

    def summary(self) -> Summary:
        """The dataset figures of these rows as a mergeable ``Summary``, from the per-row
        fields (the logits are not read again). Rows whose label is ignore_index are left
        out; a figure whose field was not computed is absent."""
        return Summary.of_fields(self.kind, self.top_k, self._fields, self.row_shape,
                                 self._labels, self._kept)


# --- the mergeable summary ---------------------------------------------------------------

# Figures that are means (and spreads) of a per-row field: field -> summary name.
_MEAN_FIELDS = {
    "multiclass": ("loss", "brier", "confidence", "entropy", "max_logit", "logsumexp"),
    "binary": ("loss", "brier", "confidence", "entropy"),
    "multilabel": ("loss",),
}
# Figures that are counts of rows with a flag field, and of integer fields' sums.
_COUNT_FIELDS = {
    "multiclass": ("correct",),
    "binary": ("correct",),
    "multilabel": ("exact_match", "n_predicted", "true_positives", "false_positives",
                   "false_negatives"),
}


def _moments(values: np.ndarray) -> tuple[int, float, float, int, int]:
    """(count, mean, sum of squared deviations) of the finite values in float64, and the
    counts of +inf and -inf values; NaN values are left out. Infinities are counted apart
    so that the merge is exact for them too (inf - inf would make the merged mean NaN)."""
    values = values[~np.isnan(values)].astype(np.float64)
    finite = values[np.isfinite(values)]
    n_posinf = int(np.count_nonzero(values == np.inf))
    n_neginf = values.size - finite.size - n_posinf
    if not finite.size:
        return 0, 0.0, 0.0, n_posinf, n_neginf
    mean = float(np.mean(finite))
    return finite.size, mean, float(np.sum((finite - mean) ** 2)), n_posinf, n_neginf


def _merged_moments(a, b):
    """Chan et al.'s parallel update: the moments of the union of two sets of values."""
    n_a, mean_a, m2_a = a[:3]
    n_b, mean_b, m2_b = b[:3]
    infinities = (a[3] + b[3], a[4] + b[4])
    if not n_a or not n_b:
        return (a[:3] if n_a else b[:3]) + infinities
    n = n_a + n_b
    delta = mean_b - mean_a
    return (n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n) \
        + infinities


def _mean_and_spread(moments) -> tuple[float, float]:
    """The mean and (population) standard deviation of the non-NaN values: infinite when
    there are infinities of one sign, NaN when of both signs or no values."""
    count, mean, m2, n_posinf, n_neginf = moments
    if n_posinf or n_neginf:
        mean = math.nan if n_posinf and n_neginf else math.copysign(math.inf, n_posinf - 0.5)
        return mean, math.nan
    if not count:
        return math.nan, math.nan
    return mean, math.sqrt(m2 / count)


class Summary:
    """Dataset figures as a state that merges: the summaries of chunks of rows combine
    (``a.merge(b)``, ``Summary.combine([...])``) into the summary of all the rows,
    counts exactly and means and spreads up to float64 rounding.

    ``counts``: integer counts (rows, correct, saturated, NaN rows, ...); ``moments``:
    per field, over the rows where it is not NaN, (count, mean, sum of squared
    deviations) of the finite values and the counts of +inf and -inf values. Means and
    spreads leave NaN values out (``nan_rows`` counts them); an infinite value makes the
    mean infinite and the spread NaN.
    ``bins``: with ``confidence`` and ``correct`` fields, the ``CalibrationBins`` of
    the top-label confidences (15 uniform bins, Guo et al.), from which ``figures()``
    gives ``ece`` and ``mce``; None otherwise.
    ``figures()`` (or ``summary[name]``) gives the figures.
    """

    CALIBRATION_BINS = 15

    def __init__(self, *, kind: str, top_k: int, counts: dict, moments: dict, bins=None):
        self.kind = kind
        self.top_k = top_k
        self.counts = counts
        self.moments = moments
        self.bins = bins

    def __eq__(self, other):
        return isinstance(other, Summary) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Summary(kind={self.kind!r}, n={self.counts['rows']})"

    @classmethod
    def of_fields(cls, kind, top_k, fields, row_shape, labels, kept) -> Summary:
        """The summary of one batch of per-row fields (see ``Scores.summary``):
        ``fields`` by name with the leading shape ``row_shape``, ``labels`` the class
        labels or None, ``kept`` the rows whose label is not ignore_index or None."""
        n_items = math.prod(row_shape)
        scored = np.ones(n_items, bool) if kept is None else kept.reshape(-1)
        n_rows = int(np.count_nonzero(scored))

        def rows_of(name):  # the field over the scored rows, first axis the row
            values = fields[name]
            return values.reshape((n_items,) + values.shape[len(row_shape):])[scored]

        counts = {"rows": n_rows}
        for name in _COUNT_FIELDS[kind]:
            if name in fields:
                counts[name] = int(np.sum(rows_of(name), dtype=np.int64))
        if kind == "multiclass" and "top_k_indices" in fields and labels is not None:
            hits = rows_of("top_k_indices") == labels.reshape(-1)[scored, None]
            counts["top_k_correct"] = int(np.count_nonzero(hits.any(axis=1)))
        if "confidence" in fields:
            counts["saturated"] = int(np.count_nonzero(rows_of("confidence") == 1.0))
        nan_source = {"multiclass": "logsumexp", "binary": "prob",
                      "multilabel": "loss"}[kind]
        if nan_source in fields:
            values = rows_of(nan_source)
            counts["nan_rows"] = int(np.count_nonzero(np.isnan(values)))
            if kind == "multiclass":
                counts["posinf_rows"] = int(np.count_nonzero(values == np.inf))
                counts["neginf_rows"] = int(np.count_nonzero(values == -np.inf))
        moments = {name: _moments(rows_of(name)) for name in _MEAN_FIELDS[kind]
                   if name in fields}
        bins = None
        if "confidence" in fields and "correct" in fields:
            bins = CalibrationBins.of(rows_of("confidence"), rows_of("correct"),
                                      n_bins=cls.CALIBRATION_BINS)
        return cls(kind=kind, top_k=top_k if "top_k_correct" in counts else 0,
                   counts=counts, moments=moments, bins=bins)

    def merge(self, other: Summary) -> Summary:
        """The summary of the rows of both (a new object)."""
        if not isinstance(other, Summary):
            raise TypeError(f"can only merge a Summary, got {type(other).__name__}")
        if (self.kind, self.top_k, set(self.counts), set(self.moments),
                self.bins is None) != (other.kind, other.top_k, set(other.counts),
                                       set(other.moments), other.bins is None):
            raise ValueError("summaries merge only when made by the same kind, top_k and "
                             "fields")
        return Summary(
            kind=self.kind, top_k=self.top_k,
            counts={name: count + other.counts[name] for name, count in self.counts.items()},
            moments={name: _merged_moments(m, other.moments[name])
                     for name, m in self.moments.items()},
            bins=None if self.bins is None else self.bins.merge(other.bins))

    @classmethod
    def combine(cls, summaries) -> Summary:
        """The summary of all the rows of ``summaries`` (in order)."""
        return merge_in_order(summaries, "summary")

    def figures(self) -> dict:
        """The figures as a dict of Python numbers (means over no rows are NaN)."""
        counts, n = self.counts, self.counts["rows"]

        def ratio(numerator, denominator):
            return numerator / denominator if denominator else math.nan

        result = {"n": n}
        for name, key in (("correct", "accuracy"), ("top_k_correct", "top_k_accuracy"),
                          ("exact_match", "exact_match"), ("n_predicted", "mean_n_predicted")):
            if name in counts:
                result[key] = ratio(counts[name], n)
        # micro-averaged over all (row, class) pairs, each from the counts it needs
        tp, fp, fn = (counts.get(name) for name in
                      ("true_positives", "false_positives", "false_negatives"))
        if tp is not None and fp is not None:
            result["precision"] = ratio(tp, tp + fp)
        if tp is not None and fn is not None:
            result["recall"] = ratio(tp, tp + fn)
        if None not in (tp, fp, fn):
            result["f1"] = ratio(2 * tp, 2 * tp + fp + fn)
        for name, moments in self.moments.items():
            mean, spread = _mean_and_spread(moments)
            key = {"loss": "mean_nll" if self.kind != "multilabel" else "mean_loss",
                   "brier": "brier"}.get(name, f"mean_{name}")
            result[key] = mean
            if name == "loss" and self.kind == "multiclass":
                # exp overflows a float past 709.78; NaN stays NaN
                result["perplexity"] = math.inf if mean > 709.78 else math.exp(mean)
            if name in ("max_logit", "logsumexp"):
                result[f"std_{name}"] = spread
        if self.bins is not None:  # top-label calibration, 15 uniform bins (lo, hi]
            result["ece"] = self.bins.error("l1")
            result["mce"] = self.bins.error("max")
        for name in ("saturated", "nan_rows", "posinf_rows", "neginf_rows"):
            if name in counts:
                result["saturated_rows" if name == "saturated" else name] = counts[name]
        return result

    def __getitem__(self, name: str):
        return self.figures()[name]
