"""The op table: every kernel of the backend contract, named once.

Each entry says what a kernel takes and writes, which public functions call it, and how
many bytes it must move (the memory floor of ``logitcore bench``). The rest of the code
reads it from here:

* ``ALL_KERNELS`` (the backend contract) is the set of names below;
* ``check_backend`` verifies, by code, that a backend module has every kernel it claims
  with the table's arguments in the table's order (tests run it on every backend);
* ``logitcore bench`` and the asv suite take each case's bytes moved from ``traffic``;
* tests take their kernel ids from ``KERNELS``.

The reference implementation of a kernel is the function of the same name in
``numpy_ref.py``; the numba one is in ``numba_kernels.py``, the cython one in
``_cython_kernels.pyx``. See docs/architecture.md for the layers and how to add an op.

Argument roles (what the Python layer hands a kernel, all C-contiguous, one float dtype
per call, float32 or float64; in a float32 call the ``rows`` and ``flat`` inputs may be
float16 or bfloat16, widened inside the compiled kernels, docs/architecture.md):

===============  =============================================================
``rows``         (n, C) input of the call's float dtype
``labels``       (n,) int64, checked to be in [0, C) or ``ignore_index``
``classes``      (C,) per-class vector of the float dtype
``broadcast``    (1, C) or (n, C) of the float dtype: a single row serves every row
``scalar``       a Python int or float
``row_out``      (n,) output of the float dtype
``rows_out``     (n, C) output; may *be* the ``rows`` input, never overlap it partially
``grad_out``     (n, C) output, or a (0, 0) array meaning "no gradient"
``flat``         (m,) input, elementwise kernels
``flat_out``     (m,) output, elementwise kernels
``row_weights``  (n,) per-row weights of the float dtype, or (0,): every row weighs 1
``row_scale``    (n,) float64 factors, one per row, or (1,) one for every row, or None
                 (the default, also (0,)): no scale. The kernel computes on
                 ``x[i] * row_scale[i]`` (``logitcore``'s ``temperature=``: 1/T),
                 scaled where each schedule loads the row, never as a full copy;
                 gradients are with respect to the unscaled x (times ``row_scale[i]``)
===============  =============================================================

``options`` are keyword arguments after ``n_threads`` whose default (None) leaves the
kernel as it was: a call that does not name them takes the untouched fast path.

The score kernels compute many per-row fields in one read of each row; every field is an
output the caller may not want. An output that was not asked for is passed as an empty
array (size 0), as ``grad_out`` is, and the kernel neither computes nor writes it. Their
extra roles (n is the number of rows: ``rows`` rows or ``flat`` elements):

=====================  ==================================================================
``labels_or_empty``    ``labels``, or a (0,) int64 array meaning "no labels" (then every
                       output that needs a label is (0,) too)
``flags_or_empty``     (n, C) uint8 of 0 / 1 (multilabel targets), or (0, 0): no labels
``field_out``          (n,) output of the float dtype, or (0,): not asked
``index_field_out``    (n,) int64 output, or (0,): not asked
``flag_field_out``     (n,) uint8 output written 0 or 1 (the Python layer passes a bool
                       array's uint8 view), or (0,): not asked
``top_k_out``          (n, k) output of the float dtype, or (0, 0): not asked
``top_k_index_out``    (n, k) int64 output, or (0, 0): not asked
``flags_out``          (n, C) uint8 output written 0 or 1, or (0, 0): not asked
=====================  ==================================================================

Every kernel takes ``n_threads`` last, writes its outputs and returns None, except
``label_stats`` and ``temperature_nll``, which return values.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

INT64_BYTES = 8

# Bytes per row of each per-row output role of the score kernels at its real width, from
# the float itemsize and top_k. ``flags_out`` (rows x classes) is not among them: it is
# written only when named in ``fields=``.
SCORE_ROW_OUTPUT_BYTES = {
    "field_out": lambda itemsize, top_k: itemsize,
    "index_field_out": lambda itemsize, top_k: INT64_BYTES,
    "flag_field_out": lambda itemsize, top_k: 1,
    "top_k_out": lambda itemsize, top_k: top_k * itemsize,
    "top_k_index_out": lambda itemsize, top_k: top_k * INT64_BYTES,
}


@dataclass(frozen=True)
class Kernel:
    """One kernel of the contract.

    ``arguments``: (name, role) pairs in call order, ``n_threads`` excluded.
    ``public``: the public functions that reach it.
    ``contract``: what it computes, in the notation of the reference implementation.
    ``options``: (name, role) pairs of keyword arguments after ``n_threads``, default None.
    ``reads`` / ``writes``: per arrays of the logits' size, the (n, C) operands read and
    written, and per row the int64 labels read and float values written. The score
    kernels' outputs and uint8 targets are counted from their roles instead, each at its
    width (``SCORE_ROW_OUTPUT_BYTES``).
    """

    name: str
    arguments: tuple[tuple[str, str], ...]
    public: tuple[str, ...]
    contract: str
    full_reads: int = 1
    full_writes: int = 0
    label_reads: int = 0
    row_writes: int = 0
    options: tuple[tuple[str, str], ...] = ()

    @property
    def argument_names(self) -> tuple[str, ...]:
        return (tuple(name for name, _ in self.arguments) + ("n_threads",)
                + tuple(name for name, _ in self.options))

    def traffic(self, n_rows: int, n_classes: int, itemsize: int, *,
                with_gradient: bool = False, row_outputs: bool = True,
                top_k: int = 0, out_itemsize: int | None = None) -> tuple[int, int]:
        """(bytes read, bytes written) the kernel must move on an (n_rows, n_classes)
        problem of inputs of ``itemsize`` bytes and float outputs of ``out_itemsize``
        (default the same; half-precision input has float32 outputs); ``with_gradient``
        adds the (n, C) gradient of the loss kernels; ``row_outputs=False`` leaves out
        per-row outputs that a reduced loss (a mean) does not need to move. A score kernel
        writes every per-row field (``top_k`` columns of each top-k field) and reads its
        labels or uint8 targets."""
        out_itemsize = itemsize if out_itemsize is None else out_itemsize
        full = n_rows * n_classes * itemsize
        full_out = n_rows * n_classes * out_itemsize
        read = self.full_reads * full + self.label_reads * n_rows * INT64_BYTES
        roles = [role for _, role in self.arguments]
        read += roles.count("flags_or_empty") * n_rows * n_classes
        written = self.full_writes * full_out
        if row_outputs:
            written += self.row_writes * n_rows * out_itemsize
            written += n_rows * sum(SCORE_ROW_OUTPUT_BYTES[role](out_itemsize, top_k)
                                    for role in roles if role in SCORE_ROW_OUTPUT_BYTES)
        if with_gradient:
            written += full_out
        return read, written


# temperature= of the public ops: with s = row_scale[i], the kernel's contract holds for
# the row x[i] * s, and a gradient (grad_out) is with respect to x[i], i.e. times s.
TEMPERATURE = (("row_scale", "row_scale"),)

KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("logsumexp", (("x", "rows"), ("out", "row_out")),
           ("logsumexp",),
           "out[i] = log(sum_c exp(x[i, c])); NaN row -> NaN, +inf -> +inf, all -inf or "
           "C == 0 -> -inf",
           row_writes=1, options=TEMPERATURE),
    Kernel("logsumexp_scaled",
           (("x", "rows"), ("b", "rows"), ("out", "row_out"), ("sign_out", "row_out")),
           ("logsumexp",),
           "out[i] = log|sum_c b[i, c] exp(x[i, c])|, sign_out[i] its sign; terms with "
           "b == 0 are left out",
           full_reads=2, row_writes=2),
    Kernel("entropy", (("x", "rows"), ("out", "row_out")),
           ("entropy",),
           "out[i] = -sum_c p_c log p_c with p = softmax(x[i]) (nats), as lse - sum_c p_c "
           "x_c; classes with p == 0 add 0; NaN row, +inf, all -inf or C == 0 -> NaN",
           row_writes=1),
    Kernel("softmax", (("x", "rows"), ("out", "rows_out")),
           ("softmax",),
           "out = exp(x - logsumexp(x)) row by row", full_writes=1, options=TEMPERATURE),
    Kernel("log_softmax", (("x", "rows"), ("out", "rows_out")),
           ("log_softmax",),
           "out = x - logsumexp(x) row by row", full_writes=1, options=TEMPERATURE),
    Kernel("sigmoid", (("x", "flat"), ("out", "flat_out")),
           ("sigmoid",),
           "out = 1 / (1 + exp(-x)), elementwise", full_writes=1),
    Kernel("log_sigmoid", (("x", "flat"), ("out", "flat_out")),
           ("log_sigmoid",),
           "out = -softplus(-x), elementwise", full_writes=1),
    Kernel("label_stats",
           (("labels", "labels"), ("weight", "classes"), ("ignore_index", "scalar")),
           ("cross_entropy",),
           "returns (first_invalid, kept_weight): the position of the first label neither "
           "in [0, C) nor ignore_index (-1 if none) and the float64 sum of weight[label] "
           "over the kept labels, summed over fixed chunks (independent of n_threads)",
           full_reads=0, label_reads=1),
    Kernel("cross_entropy_labels",
           (("x", "rows"), ("labels", "labels"), ("weight", "classes"),
            ("ignore_index", "scalar"), ("label_smoothing", "scalar"),
            ("loss_out", "row_out"), ("grad_out", "grad_out"), ("grad_scale", "scalar")),
           ("cross_entropy",),
           "loss_out[i] = (1 - eps) w[y] (lse - x[y]) + eps / C sum_c w[c] (lse - x[c]), "
           "0 for ignored rows; grad_out = grad_scale (softmax(x) sum(q) - q) with "
           "q = (1 - eps) w[y] onehot(y) + eps / C w (0 for ignored rows)",
           label_reads=1, row_writes=1, options=TEMPERATURE),
    Kernel("cross_entropy_probs",
           (("x", "rows"), ("target", "rows"), ("weight", "classes"),
            ("label_smoothing", "scalar"), ("loss_out", "row_out"),
            ("grad_out", "grad_out"), ("grad_scale", "scalar")),
           ("cross_entropy",),
           "with t' = (1 - eps) t + eps / C: loss_out[i] = -sum_c w[c] t'[c] "
           "log_softmax(x)[c]; grad_out = grad_scale (softmax(x) sum(w t') - w t')",
           full_reads=2, row_writes=1, options=TEMPERATURE),
    Kernel("bce_with_logits",
           (("x", "rows"), ("target", "rows"), ("weight", "broadcast"),
            ("pos_weight", "broadcast"), ("loss_out", "rows_out"), ("grad_out", "grad_out"),
            ("grad_scale", "scalar")),
           ("binary_cross_entropy_with_logits",),
           "element loss w ((1 - t) x + (1 + (pw - 1) t) softplus(-x)); loss_out (n, C) "
           "elementwise or (n, 1) row sums; grad_out = grad_scale w (sigmoid(x) "
           "(1 + (pw - 1) t) - pw t)",
           full_reads=2, row_writes=1, options=TEMPERATURE),
    Kernel("softmax_backward", (("dy", "rows"), ("y", "rows"), ("out", "rows_out")),
           ("softmax_backward",),
           "y = softmax(x): out = y (dy - sum(dy y))", full_reads=2, full_writes=1),
    Kernel("log_softmax_backward", (("dy", "rows"), ("y", "rows"), ("out", "rows_out")),
           ("log_softmax_backward",),
           "y = log_softmax(x): out = dy - exp(y) sum(dy)", full_reads=2, full_writes=1),
    # --- scoring (logitcore.score): one read of each row, every field an optional output.
    # With M the row max, lse = logsumexp, p = exp(x - lse) and y the label. Ties go to
    # the lower class index everywhere. Rows whose label is ignore_index get
    # label_logprob = loss = brier = 0, correct = 0, label_rank = 0. Edge rows (a NaN, a
    # +inf, all -inf) follow the table in logitcore/_score.py.
    Kernel("score_multiclass",
           (("x", "rows"), ("labels", "labels_or_empty"), ("ignore_index", "scalar"),
            ("top_k", "scalar"),
            ("pred_out", "index_field_out"), ("max_logit_out", "field_out"),
            ("confidence_out", "field_out"), ("margin_out", "field_out"),
            ("logit_margin_out", "field_out"), ("entropy_out", "field_out"),
            ("logsumexp_out", "field_out"),
            ("top_k_indices_out", "top_k_index_out"), ("top_k_probs_out", "top_k_out"),
            ("label_logprob_out", "field_out"), ("loss_out", "field_out"),
            ("correct_out", "flag_field_out"), ("label_rank_out", "index_field_out"),
            ("brier_out", "field_out")),
           ("score",),
           "pred = first argmax (-1 for a NaN row); max_logit = M; confidence = max p; "
           "margin = p(1st) - p(2nd); logit_margin = x(1st) - x(2nd) (the 2nd of a 1-class "
           "row: logit -inf, p 0); entropy = -sum p log p (terms with p == 0 are 0); "
           "logsumexp = lse; top_k_indices / top_k_probs: the top_k classes by descending "
           "x (top_k is their column count, 0 when neither is asked); label_logprob = "
           "x[y] - lse; loss = -label_logprob; correct = pred == y; label_rank = 1 + "
           "#{c: x[c] > x[y]}; brier = sum_c (p[c] - onehot(y)[c])^2",
           label_reads=1),
    # --- temperature fitting (logitcore.fit_temperature): sums over rows, no per-row output.
    Kernel("temperature_nll",
           (("x", "rows"), ("labels", "labels"), ("sample_weight", "row_weights"),
            ("ignore_index", "scalar"), ("inverse_temperature", "scalar")),
           ("fit_temperature",),
           "with b = inverse_temperature > 0, p = softmax(b x[i]), M = max x[i] and y the "
           "label, over the rows kept (label != ignore_index, weight w != 0) returns the "
           "float64 sums (sum w, sum w (lse(b x) - b x[y]), sum w (E_p[x] - x[y]), sum w "
           "Var_p[x], sum w (M - x[y]), sum w E_p[(x - E_p[x])^3]): the NLL and its first "
           "and second derivatives in b, the slope the NLL tends to as b -> inf, and the "
           "NLL's third derivative in b; a row whose max is not finite "
           "makes them NaN. Rows are summed in fixed chunks of ROW_SUM_CHUNK_ELEMENTS "
           "elements (whole rows, at least one), the chunks in order, whatever n_threads",
           label_reads=1),
    Kernel("score_binary",
           (("x", "flat"), ("labels", "labels_or_empty"), ("ignore_index", "scalar"),
            ("threshold", "scalar"),
            ("prob_out", "field_out"), ("pred_out", "flag_field_out"),
            ("confidence_out", "field_out"), ("entropy_out", "field_out"),
            ("loss_out", "field_out"), ("correct_out", "flag_field_out"),
            ("brier_out", "field_out")),
           ("score",),
           "p = sigmoid(x); prob = p; pred = p >= threshold; confidence = max(p, 1 - p); "
           "entropy = -p log p - (1 - p) log(1 - p); loss = BCE(x, y); correct = pred == "
           "y (0 for a NaN x); brier = (p - y)^2; labels are 0, 1 or ignore_index",
           label_reads=1),
    Kernel("score_multilabel",
           (("x", "rows"), ("targets", "flags_or_empty"), ("threshold", "classes"),
            ("n_predicted_out", "index_field_out"), ("loss_out", "field_out"),
            ("exact_match_out", "flag_field_out"), ("true_positives_out", "index_field_out"),
            ("false_positives_out", "index_field_out"),
            ("false_negatives_out", "index_field_out"), ("pred_out", "flags_out")),
           ("score",),
           "pred[c] = sigmoid(x[c]) >= threshold[c]; n_predicted = sum pred; loss = mean_c "
           "BCE(x[c], t[c]); exact_match = all(pred == t); true / false positives and "
           "false negatives counted per row"),
)}

ALL_KERNELS = frozenset(KERNELS)

# The kernels that take a row_scale (temperature=).
SCALED_KERNELS = frozenset(name for name, k in KERNELS.items() if k.options == TEMPERATURE)

# The scoring kernels (logitcore.score).
SCORE_KERNELS = frozenset({"score_multiclass", "score_binary", "score_multilabel"})

# The kernels whose compiled versions take float16 / bfloat16 inputs and widen them at the
# schedules' load points. Not yet among them: the score kernels (their class split and
# finish read the row outside the loaded block) and temperature_nll (its own row loop);
# logitcore.score and fit_temperature hand them float32.
HALF_INPUT_KERNELS = ALL_KERNELS - SCORE_KERNELS - {"temperature_nll"}


def check_backend(module) -> list[str]:
    """Every way ``module`` breaks the table: a kernel it claims in SUPPORTED_KERNELS that
    is missing, not in the table, or has other arguments. An empty list means it fits."""
    problems = []
    claimed = getattr(module, "SUPPORTED_KERNELS", None)
    if not isinstance(claimed, frozenset):
        return ["SUPPORTED_KERNELS is not a frozenset"]
    for name in sorted(claimed):
        kernel = KERNELS.get(name)
        if kernel is None:
            problems.append(f"{name}: not a kernel of the op table")
            continue
        function = getattr(module, name, None)
        if not callable(function):
            problems.append(f"{name}: claimed but missing")
            continue
        try:
            names = tuple(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            problems.append(f"{name}: its signature cannot be read")
            continue
        if names != kernel.argument_names:
            problems.append(f"{name}: arguments {names}, the table says "
                            f"{kernel.argument_names}")
    return problems
