"""Public functions: validate, reduce to (rows, classes), allocate, dispatch to a kernel.

Every function here follows one pattern: check the arguments (``_validate``), move the
class axis (or the reduced axes) last and view the data as a C-contiguous 2-D array, pick
the backend (``_config.resolve``), call the kernel on preallocated outputs and give the
result back in the caller's layout. No arithmetic on the data happens here, only O(rows)
bookkeeping such as the denominator of a weighted mean.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from numpy.exceptions import AxisError

from . import _config
from . import _validate as v

_last_dispatch = threading.local()
# Read by _small_row_call: the thread's config() contexts (empty when none is active) and
# the plans of small calls.
_config_context = _config._local
_small_call_plans = _config.small_call_plans

_NO_GRADIENT = {
    np.dtype(np.float32): np.empty((0, 0), np.float32),
    np.dtype(np.float64): np.empty((0, 0), np.float64),
}


def last_dispatch() -> dict:
    """What ran for the last logitcore call made by this thread.

    >>> import numpy as np, logitcore
    >>> _ = logitcore.softmax(np.zeros((2, 3)), backend="numpy")
    >>> logitcore.last_dispatch()["backend"]
    'numpy'
    """
    info = getattr(_last_dispatch, "info", None)
    if info is None:
        return {}
    return dict(zip(("op", "kernel", "backend", "n_threads"), info))


def _run(kernel: str, op: str, backend, *args, row_scale=None):
    """Resolve the backend for ``kernel`` and call it with the configured threads.

    ``args[0]`` is the main input; its size steers the "auto" choice. ``row_scale``
    (``temperature=``, op_table): passed only when given, so that an untempered call is
    the kernel's plain call.
    """
    name, module = _config.resolve(kernel, backend, args[0].size)
    n_threads = _config.get_num_threads()
    _last_dispatch.info = (op, kernel, name, n_threads)
    if row_scale is not None:
        return getattr(module, kernel)(*args, n_threads, row_scale=row_scale)
    return getattr(module, kernel)(*args, n_threads)


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _small_row_call(kernel: str, x, axis, row_output: bool):
    """A small call of the most common kind with the least Python in the way: for a
    1000-class row the kernel takes about as long as the usual checks and lookups.

    The kind: a C-contiguous float32/float64 array of rows under SMALL_CALL_ELEMENTS, the
    class axis last, no backend named, no config() context active. Returns None for any
    other call (the caller then takes the full path, which gives the same result).
    """
    if (axis != -1 and axis != 1) or _config_context.__dict__:
        return None
    plan = _small_call_plans.get(kernel)
    if plan is not None and plan[3] is not None:
        # the backend checks x and allocates in compiled code (None: not the plain case)
        result = plan[3](x, plan[1])
        if result is not None:
            _last_dispatch.info = plan[2]
        return result
    if (x.ndim != 2 or x.size >= _config.SMALL_CALL_ELEMENTS or x.dtype not in _KERNEL_DTYPES
            or not x.flags.c_contiguous):
        return None
    function, n_threads, dispatch, _ = plan or _config.small_call_plan(kernel, x.size)
    result = np.empty(x.shape[0] if row_output else x.shape, x.dtype)
    function(x, result, n_threads)
    _last_dispatch.info = dispatch
    return result


# --- layout helpers ---------------------------------------------------------------

def _moved_last(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """View of ``x`` with ``axes`` moved, in order, to the end."""
    if axes == tuple(range(x.ndim - len(axes), x.ndim)):
        return x
    return np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))


def _rows_shape(moved_shape: tuple, n_class_axes: int) -> tuple[int, int]:
    split = len(moved_shape) - n_class_axes
    return math.prod(moved_shape[:split]), math.prod(moved_shape[split:])


def _as_rows(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """C-contiguous (rows, classes) array: ``axes`` flattened into the class axis.

    A view when ``x`` is already laid out that way, otherwise a copy (the input is never
    written through this array unless it is a view the caller asked to overwrite).
    """
    if x.ndim == 2 and axes == (1,) and x.flags.c_contiguous:  # already (rows, classes)
        return x
    moved = _moved_last(x, axes)
    return np.ascontiguousarray(moved).reshape(_rows_shape(moved.shape, len(axes)))


def _rows_view(array: np.ndarray, axes: tuple[int, ...]):
    """The (rows, classes) view of ``array`` if it exists without copying, else None."""
    if array.ndim == 2 and axes == (1,) and array.flags.c_contiguous:
        return array
    moved = _moved_last(array, axes)
    if not moved.flags.c_contiguous:
        return None
    return moved.reshape(_rows_shape(moved.shape, len(axes)))


def _from_rows(rows: np.ndarray, template: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``_as_rows`` for a result shaped like ``template``.

    Whether the class axes move back depends on ``axes``, never on the shapes: a (3, 3)
    result with the class axis 0 has the right shape but is transposed.
    """
    result = rows.reshape(_moved_last(template, axes).shape)
    last = tuple(range(template.ndim - len(axes), template.ndim))
    if axes != last:
        result = np.ascontiguousarray(np.moveaxis(result, last, axes))
    return result


def _same_shape_op(kernel, op, x, axes, out, backend, extra_inputs=(), dtype=None,
                   row_scale=None):
    """Run a kernel whose output has the input's shape (softmax, backward passes...).

    ``extra_inputs`` are further operands of x's shape, already as the kernels read them;
    ``dtype``: the call's compute dtype, the output's (default x's); ``row_scale``: the
    kernel's (``temperature=``).
    """
    dtype = x.dtype if dtype is None else dtype
    x2d = _as_rows(x, axes)
    operands = [x2d] + [_as_rows(e, axes) for e in extra_inputs]
    if out is None:
        result2d = np.empty(x2d.shape, dtype)
        _run(kernel, op, backend, *operands, result2d, row_scale=row_scale)
        # x2d is x itself only when x already is (rows, classes): nothing to undo
        return result2d if x2d is x else _from_rows(result2d, x, axes)
    out2d = _rows_view(out, axes)
    if out2d is not None:
        _run(kernel, op, backend, *operands, out2d, row_scale=row_scale)
    else:  # a strided out: compute densely, then copy into the caller's layout
        result2d = np.empty(x2d.shape, dtype)
        _run(kernel, op, backend, *operands, result2d, row_scale=row_scale)
        out[...] = _from_rows(result2d, x, axes)
    return out


@functools.lru_cache(maxsize=8)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    """A read-only vector of n ones, kept between calls: the unit class weights of a
    131072-class row are a large part of a one-row call's time to allocate and fill."""
    ones = np.ones(n, dtype)
    ones.flags.writeable = False
    return ones


def _checked_out(out, shape, dtype, inputs):
    """The plain-ndarray view of the caller's ``out`` that the kernels write through (the
    public functions return the caller's own object), or None."""
    if out is None:
        return None
    out_view = v.check_out(out, shape, dtype)
    v.check_no_partial_overlap(out_view, inputs)
    return out_view


def _scalar_or_array(result: np.ndarray):
    """0-d results come back as NumPy scalars, like NumPy reductions."""
    return result[()] if result.ndim == 0 else result


def _result_or_out(result: np.ndarray, out):
    """The caller's ``out`` object when given (a subclass stays itself), else ``result``,
    a NumPy scalar when 0-d (as SciPy's softmax of a scalar)."""
    return _scalar_or_array(result) if out is None else out


# --- log-sum-exp, softmax, log-softmax --------------------------------------------

def logsumexp(x, axis=-1, keepdims=False, *, b=None, return_sign=False, out=None,
              temperature=None, backend=None):
    """Log of the sum of exponentials along ``axis``, computed without overflow.

    Matches ``scipy.special.logsumexp``: ``axis`` may be an int, a tuple of ints or None
    (all axes); ``b`` scales each ``exp(x)``; ``x`` and ``b`` broadcast against each
    other and the result has the dtype NumPy promotes them to (half precision and
    integers mapped as everywhere else); with ``return_sign=True`` the result is
    ``(log|sum|, sign)``, otherwise a negative sum gives NaN. A row holding NaN gives NaN
    (sign NaN), one holding +inf gives +inf, an all -inf or empty row gives -inf (sign 0).
    A scalar ``x`` is a single class. ``temperature`` (a positive scalar, or one per row:
    an array of the result's shape without keepdims) gives ``logsumexp(x / T)``, with the
    scale applied inside the kernel (not with ``b``).

    >>> import numpy as np, logitcore
    >>> round(float(logitcore.logsumexp(np.array([0.0, np.log(3.0)]))), 12)  # log(1 + 3)
    1.38629436112
    >>> logitcore.logsumexp(np.array([[0.0, 0.0], [1000.0, 1000.0]])) - [0, 1000]
    array([0.69314718, 0.69314718])
    >>> logitcore.logsumexp([1.0, 2.0], b=[1.0, -1.0], return_sign=True)
    (np.float64(1.5413248546129181), np.float64(-1.0))
    """
    if (b is None and out is None and backend is None and not keepdims and not return_sign
            and temperature is None and type(x) is np.ndarray):
        result = _small_row_call("logsumexp", x, axis, row_output=True)
        if result is not None:
            return result
    if b is None:
        x, dtype = v.as_kernel_input(x, "x")
        x_given = x
    else:
        x_given = x
        x, b, dtype = _promoted_with_scale(x, b)
    if x.ndim == 0:  # as SciPy: a scalar is one class (axis 0, -1 or None all work)
        x = x.reshape(1)
        b = None if b is None else b.reshape(1)
    axes = v.normalize_axes(axis, x.ndim)
    if axes == (x.ndim - 1,):  # the common case, kept cheap
        kept_shape = x.shape[:-1]
        result_shape = kept_shape + (1,) if keepdims else kept_shape
    else:
        kept_shape = tuple(n for i, n in enumerate(x.shape) if i not in axes)
        result_shape = (tuple(1 if i in axes else n for i, n in enumerate(x.shape))
                        if keepdims else kept_shape)
    out_view = _checked_out(out, result_shape, dtype, {"x": x_given})
    row_scale = v.row_scale_of_temperature(temperature, kept_shape)
    if row_scale is not None and b is not None:
        raise ValueError("temperature cannot be combined with b")
    x2d = _as_rows(x, axes)
    result = np.empty(x2d.shape[0], dtype)
    if b is None:
        _run("logsumexp", "logsumexp", backend, x2d, result, row_scale=row_scale)
        if return_sign:
            # Without b the sum of exponentials is positive unless it is 0 (an all -inf
            # or empty row: sign 0, as SciPy for all -inf) or NaN.
            sign = np.where(result == -np.inf, 0.0, 1.0).astype(dtype)
            sign[np.isnan(result)] = np.nan
    else:
        sign = np.empty(x2d.shape[0], dtype)
        _run("logsumexp_scaled", "logsumexp", backend, x2d, _as_rows(b, axes), result, sign)
        if not return_sign:
            result[sign < 0] = np.nan
    result = result.reshape(result_shape)
    if out_view is not None:
        out_view[...] = result
    result = _scalar_or_array(result) if out is None else out
    if return_sign:
        return result, _scalar_or_array(sign.reshape(result_shape))
    return result


def entropy(x, axis=-1, *, out=None, backend=None):
    """Shannon entropy (in nats) of ``softmax(x)`` along ``axis`` (int, tuple or None).

    ``-sum p log p`` with ``p = softmax(x)``, i.e. ``scipy.stats.entropy(softmax(x))`` and
    ``torch.distributions.Categorical(logits=x).entropy()``, computed from the logits
    without forming ``p``. A -inf entry (probability 0) adds 0; a single class gives 0; a
    row holding NaN or +inf, or only -inf, has no softmax and gives NaN, and so does an
    empty row (SciPy and PyTorch reject it). The reduced axes are dropped from the shape.

    >>> import numpy as np, logitcore
    >>> logitcore.entropy(np.array([[0.0, 0.0], [0.0, -np.inf]]))  # log 2, then 0
    array([0.69314718, 0.        ])
    >>> round(float(logitcore.entropy(np.zeros(4))), 12)  # uniform over 4: log 4
    1.38629436112
    """
    x_given = x
    x, dtype = v.as_kernel_input(x, "x")
    if x.ndim == 0:  # as logsumexp: a scalar is one class
        x = x.reshape(1)
    axes = v.normalize_axes(axis, x.ndim)
    kept_shape = tuple(n for i, n in enumerate(x.shape) if i not in axes)
    out_view = _checked_out(out, kept_shape, dtype, {"x": x_given})
    x2d = _as_rows(x, axes)
    result = np.empty(x2d.shape[0], dtype)
    _run("entropy", "entropy", backend, x2d, result)
    result = result.reshape(kept_shape)
    if out_view is not None:
        out_view[...] = result
    return _result_or_out(result, out)


def _promoted_with_scale(x, b):
    """``x`` and ``b`` of logsumexp broadcast against each other, in the dtype NumPy
    promotes the pair to (``np.result_type``; a Python scalar ``b`` takes x's dtype), then
    mapped by the dtype policy (half -> float32, integers -> float64), as SciPy does;
    half operands of a float32 call stay half (the kernels read them). Returns x, b and
    the compute dtype."""
    x = np.asarray(x)
    v.compute_dtype(x.dtype, "x")  # names the argument of a complex / object input
    b_array = np.asarray(b)
    v.compute_dtype(b_array.dtype, "b")
    weak_scalar = type(b) in (int, float)  # NumPy >= 2 promotion (NEP 50)
    dtype = v.compute_dtype(np.result_type(x, b if weak_scalar else b_array), "b")
    try:
        shape = np.broadcast_shapes(x.shape, b_array.shape)
    except ValueError:
        raise ValueError(
            f"b must broadcast against x: x has shape {x.shape}, b has shape {b_array.shape}"
        ) from None
    return (np.broadcast_to(v.kernel_operand(x, dtype), shape),
            np.broadcast_to(v.kernel_operand(b_array, dtype), shape), dtype)


def softmax(x, axis=-1, *, out=None, temperature=None, backend=None):
    """Probabilities ``exp(x) / sum(exp(x))`` along ``axis`` (int or tuple).

    Matches ``scipy.special.softmax`` and ``torch.softmax``. ``out=x`` computes in place.
    A -inf entry gets probability exactly 0; a row holding NaN or +inf, or only -inf,
    becomes all NaN. ``temperature`` (a positive scalar, or an array with one per row:
    the shape of ``x`` without ``axis``) gives ``softmax(x / T)``, scaled inside the kernel.

    >>> import numpy as np, logitcore
    >>> logitcore.softmax(np.array([0.0, np.log(3.0), -np.inf]))
    array([0.25, 0.75, 0.  ])
    >>> x = np.array([[1.0, 1.0]], dtype=np.float32)
    >>> _ = logitcore.softmax(x, out=x); x
    array([[0.5, 0.5]], dtype=float32)
    """
    return _softmax_op("softmax", softmax, x, axis, out, temperature, backend)


def log_softmax(x, axis=-1, *, out=None, temperature=None, backend=None):
    """Log-probabilities ``x - logsumexp(x)`` along ``axis`` (int or tuple).

    Matches ``scipy.special.log_softmax`` and ``torch.log_softmax``; ``out=x`` works in
    place; a -inf entry stays -inf, a row holding NaN or +inf, or only -inf, is all NaN.
    ``temperature`` (scalar or one per row) gives ``log_softmax(x / T)``, as ``softmax``.

    >>> import numpy as np, logitcore
    >>> logitcore.log_softmax(np.array([0.0, 0.0]))
    array([-0.69314718, -0.69314718])
    """
    return _softmax_op("log_softmax", log_softmax, x, axis, out, temperature, backend)


def _softmax_op(name, function, x, axis, out, temperature, backend):
    """softmax or log_softmax: ``name`` is the kernel's and ``function``'s, the public
    function (which a 0-d x goes back to)."""
    if out is None and backend is None and temperature is None and type(x) is np.ndarray:
        result = _small_row_call(name, x, axis, row_output=False)
        if result is not None:
            return result
    x, dtype = v.as_kernel_input(x, "x")
    if x.ndim == 0:
        v.row_scale_of_temperature(temperature, ())  # one class: the same for any T
        return _of_scalar(function, x, axis, out, backend)
    axes = v.normalize_axes(axis, x.ndim)
    row_scale = v.row_scale_of_temperature(
        temperature, tuple(n for i, n in enumerate(x.shape) if i not in axes))
    out_view = _checked_out(out, x.shape, dtype, {"x": x})
    result = _same_shape_op(name, name, x, axes, out_view, backend, dtype=dtype,
                            row_scale=row_scale)
    return result if out is None else out  # >= 1-D: 0-d x went to _of_scalar


def _of_scalar(function, x, axis, out, backend):
    """softmax / log_softmax of a 0-d ``x``: as SciPy, a single class (axis 0, -1 or
    None), returned as a NumPy scalar (or written into a 0-d ``out``)."""
    try:
        v.normalize_axes(axis, 1)
    except AxisError:
        raise AxisError(
            f"axis={axis!r} is out of bounds for a 0-d x (a single class: axis 0, -1 or None)"
        ) from None
    if out is not None:
        out_view = v.check_out(out, (), v.compute_dtype(x.dtype, "x"))
        function(x.reshape(1), axis, out=out_view.reshape(1), backend=backend)
        return out
    return function(x.reshape(1), axis, backend=backend)[0]


# --- elementwise ------------------------------------------------------------------

def _elementwise(kernel, x, out, backend):
    x, dtype = v.as_kernel_input(x, "x")
    out_view = _checked_out(out, x.shape, dtype, {"x": x})
    flat = np.ascontiguousarray(x).reshape(-1)
    if out_view is not None and out_view.flags.c_contiguous:
        _run(kernel, kernel, backend, flat, out_view.reshape(-1))
        return out
    result = np.empty(flat.shape, dtype)
    _run(kernel, kernel, backend, flat, result)
    if out_view is not None:
        out_view[...] = result.reshape(x.shape)
    return _result_or_out(result.reshape(x.shape), out)


def sigmoid(x, *, out=None, backend=None):
    """Logistic function ``1 / (1 + exp(-x))``, exact to the last bit for large |x|.

    Matches ``scipy.special.expit``.

    >>> import numpy as np, logitcore
    >>> logitcore.sigmoid(np.array([-800.0, 0.0, 800.0]))
    array([0. , 0.5, 1. ])
    """
    return _elementwise("sigmoid", x, out, backend)


def log_sigmoid(x, *, out=None, backend=None):
    """``log(sigmoid(x))`` without overflow or cancellation (= ``-softplus(-x)``).

    Matches ``torch.nn.functional.logsigmoid``.

    >>> import numpy as np, logitcore
    >>> logitcore.log_sigmoid(np.array([-800.0, 0.0, 1.0])).round(6).tolist()
    [-800.0, -0.693147, -0.313262]
    """
    return _elementwise("log_sigmoid", x, out, backend)


# --- losses -----------------------------------------------------------------------

def _gradient_buffer(return_grad, grad_out, logits, operands, dtype):
    """The array (a plain ndarray) the gradient goes into, or None without return_grad.

    ``operands`` are the caller's arrays by argument name; ``grad_out`` may be one of
    them exactly but may not overlap any partially.
    """
    if grad_out is not None and not return_grad:
        raise ValueError("grad_out is only used with return_grad=True")
    if not return_grad:
        return None
    if grad_out is None:
        return np.empty(logits.shape, dtype)
    gradient = v.check_out(grad_out, logits.shape, dtype, "grad_out")
    v.check_no_partial_overlap(gradient, operands, "grad_out")
    return gradient


def _reduce(row_losses: np.ndarray, reduction: str, denominator: float, dtype):
    if reduction == "none":
        return row_losses
    # float64 accumulation: the sum over rows is a small O(rows) pass and this makes
    # the result independent of how the kernel split the rows across threads.
    # (np.add.reduce, not np.sum: the same pairwise sum without np.sum's dispatch layers.)
    total = float(np.add.reduce(row_losses, axis=None, dtype=np.float64))
    if reduction == "sum":
        return dtype.type(total)
    return dtype.type(_ieee_divide(total, denominator))


def _ieee_divide(numerator: float, denominator: float) -> float:
    """numerator / denominator with IEEE results for a zero denominator (0/0 and NaN/0
    give NaN, x/0 gives inf of x's sign), without entering NumPy's error state (a cost per call).
    A batch whose labels are all ignore_index has mean 0/0 = NaN, as in torch."""
    if denominator != 0.0:
        return numerator / denominator
    if numerator == 0.0 or math.isnan(numerator):
        return math.nan
    return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)


def _gradient_rows(gradient, x2d, axes, other_reads, dtype):
    """The 2-D array the kernel writes the gradient into: a view of ``gradient`` when
    its layout allows, else a dense scratch array copied back by ``_finish_gradient``.

    The kernels may write the gradient over the logits they read (``x2d``), but not over
    another operand (``other_reads``: targets, weights): they read those again after
    writing. So a gradient that shares memory with one goes to scratch as well.
    """
    if gradient is None:
        return _NO_GRADIENT[dtype]
    rows = _rows_view(gradient, axes)
    if rows is None or any(np.may_share_memory(rows, read) for read in other_reads):
        return np.empty(x2d.shape, dtype)
    return rows


def _finish_gradient(loss, gradient, grad2d, axes, grad_out):
    """``(loss, gradient)`` with the gradient in the caller's layout (and the caller's
    own ``grad_out`` object), or ``loss`` alone without a gradient."""
    if gradient is None:
        return loss
    if not np.shares_memory(grad2d, gradient):
        gradient[...] = _from_rows(grad2d, gradient, axes)
    return loss, gradient if grad_out is None else grad_out


def _checked_labels(target, loss_shape, logits_shape, class_axis, ignore_index,
                    class_weight, backend):
    """Integer labels as a flat int64 array in row order, after every check, and the
    summed class weight of the labels that are not ``ignore_index``."""
    if target.shape != loss_shape:
        kind = "class probabilities" if target.dtype.kind == "f" else "integer labels"
        raise ValueError(
            f"target does not fit logits of shape {logits_shape} with class axis "
            f"{class_axis}: target has shape {target.shape}; integer labels need shape "
            f"{loss_shape}, class probabilities shape {logits_shape} (got {kind})"
        )
    if target.dtype.kind not in "iu":
        raise TypeError(
            f"target with the shape of labels {loss_shape} must have an integer dtype, "
            f"got {target.dtype}"
        )
    return _labels_in_range(target, "target", "cross_entropy", ignore_index, class_weight,
                            backend)


def _labels_in_range(labels, name, op, ignore_index, class_weight, backend):
    """Integer ``labels`` (the argument ``name`` of ``op``) as a flat int64 array, and the
    summed ``class_weight`` of those that are not ``ignore_index``; IndexError for a label
    neither in [0, len(class_weight)) nor ``ignore_index``."""
    flat, first_invalid = v.int64_labels(labels)
    if first_invalid < 0:
        first_invalid, kept_weight = _run("label_stats", op, backend, flat, class_weight,
                                          ignore_index)
    if first_invalid >= 0:
        position = tuple(int(i) for i in np.unravel_index(first_invalid, labels.shape))
        raise IndexError(
            f"{name}{list(position)} = {labels[position]} is not a class index in "
            f"[0, {class_weight.shape[0]}) and not ignore_index ({ignore_index})"
        )
    return flat, kept_weight


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, return_grad=False,
                  grad_out=None, temperature=None, backend=None):
    """Cross-entropy between softmax(logits) along ``axis`` and ``target``.

    Same values as ``torch.nn.functional.cross_entropy`` (class axis ``axis``, default
    last, where torch uses 1). ``target`` is either integer class labels with the
    shape of ``logits`` minus the class axis, or floating class probabilities with the
    shape of ``logits``. ``weight`` (one per class) rescales each class; rows whose label
    is ``ignore_index`` contribute nothing; ``label_smoothing`` mixes the target with the
    uniform distribution. ``reduction="mean"`` divides by the summed weight of the
    non-ignored labels (by the row count for probability targets): a batch where every
    label is ignored gives NaN, as in torch.

    ``return_grad=True`` returns ``(loss, grad)`` where ``grad`` is the derivative of the
    reduced loss (of ``loss.sum()`` for ``reduction="none"``) with respect to
    ``logits``, from the same pass over the data; ``grad_out`` receives it and may be
    ``logits`` itself.

    ``temperature`` (a positive scalar, or one per row: an array of the labels' shape)
    gives the loss of ``logits / T``, scaled inside the kernel; the gradient is still with
    respect to ``logits`` (``(softmax(logits / T) - target) / T`` per row, as autograd).

    >>> import numpy as np, logitcore
    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> labels = np.array([0, 2])
    >>> logitcore.cross_entropy(logits, labels, reduction="none")
    array([0.23954477, 1.09861229])
    >>> loss, grad = logitcore.cross_entropy(logits, labels, return_grad=True)
    >>> round(float(loss), 6), grad.shape
    (0.669079, (2, 3))
    """
    original_logits = logits
    logits, dtype = v.as_kernel_input(logits, "logits")
    class_axis, n_classes, reduction, label_smoothing, ignore_index = \
        v.check_cross_entropy_arguments(logits.shape, axis, reduction, label_smoothing,
                                        ignore_index)
    axes = (class_axis,)
    class_weight = (
        _ones(n_classes, dtype) if weight is None
        else v.check_class_weight(weight, n_classes, dtype)
    )
    original_target = target
    target = np.asarray(target)
    loss_shape = logits.shape[:class_axis] + logits.shape[class_axis + 1:]
    row_scale = v.row_scale_of_temperature(temperature, loss_shape)
    probability_targets = (target.dtype.kind == "f" or v.is_half(target.dtype)) and (
        target.shape == logits.shape)
    if probability_targets:
        target = v.second_rows_operand(target, "target", dtype)
    else:
        labels, kept_weight = _checked_labels(target, loss_shape, logits.shape, class_axis,
                                              ignore_index, class_weight, backend)

    gradient = _gradient_buffer(return_grad, grad_out, logits, {
        "logits": original_logits, "target": original_target, "weight": weight}, dtype)
    x2d = _as_rows(logits, axes)
    target2d = _as_rows(target, axes) if probability_targets else labels
    grad2d = _gradient_rows(gradient, x2d, axes, (target2d, class_weight), dtype)
    row_losses = np.empty(x2d.shape[0], dtype)
    # The mean divides by the row count (probabilities) or by the summed weight of the
    # labels that are not ignored (torch's weighted mean); the gradient carries 1/that.
    if reduction != "mean":
        denominator = 1.0
    elif probability_targets:
        denominator = float(x2d.shape[0])
    else:
        denominator = kept_weight
    grad_scale = 1.0 / denominator if denominator else 0.0

    if probability_targets:
        _run("cross_entropy_probs", "cross_entropy", backend, x2d, target2d, class_weight,
             label_smoothing, row_losses, grad2d, grad_scale, row_scale=row_scale)
    else:
        _run("cross_entropy_labels", "cross_entropy", backend, x2d, target2d, class_weight,
             ignore_index, label_smoothing, row_losses, grad2d, grad_scale,
             row_scale=row_scale)

    loss = _reduce(row_losses.reshape(loss_shape), reduction, denominator, dtype)
    return _finish_gradient(loss, gradient, grad2d, axes, grad_out)


def _elementwise_weight(weight, logits_shape, name, dtype):
    """``weight`` / ``pos_weight`` as (1, C) when it varies only along the last axis,
    else as a full (rows, C) array."""
    weight = v.float_array_like(weight, name, dtype)
    try:
        broadcast_shape = np.broadcast_shapes(weight.shape, logits_shape)
    except ValueError:
        broadcast_shape = None
    if broadcast_shape != tuple(logits_shape):
        raise ValueError(
            f"{name} must broadcast to the shape of logits: logits has shape "
            f"{tuple(logits_shape)}, {name} has shape {weight.shape}"
        )
    v.check_finite(weight, name)
    n_classes = logits_shape[-1]
    if all(n == 1 for n in weight.shape[:-1]):
        return np.ascontiguousarray(np.broadcast_to(weight.reshape(-1), (1, n_classes)))
    return np.ascontiguousarray(np.broadcast_to(weight, logits_shape)).reshape(-1, n_classes)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction="mean", return_grad=False, grad_out=None,
                                     temperature=None, backend=None):
    """Binary cross-entropy of ``sigmoid(logits)`` against ``target`` in [0, 1].

    Same values as ``torch.nn.functional.binary_cross_entropy_with_logits``: ``weight``
    broadcasts against ``logits`` and rescales each element; ``pos_weight`` (typically
    one per class, last axis) rescales the positive term. ``reduction="mean"`` averages
    over all elements. ``return_grad=True`` returns ``(loss, grad)`` from the same pass;
    ``grad_out`` may be ``logits`` itself. ``temperature`` (a positive scalar, or one per
    row: an array of the logits' shape without the last axis) gives the loss of
    ``logits / T``, scaled inside the kernel; the gradient is with respect to ``logits``.

    >>> import numpy as np, logitcore
    >>> logitcore.binary_cross_entropy_with_logits(np.array([0.0, 2.0]), np.array([1.0, 0.0]),
    ...                                            reduction="none")
    array([0.69314718, 2.12692801])
    """
    operands = {"logits": logits, "target": target, "weight": weight, "pos_weight": pos_weight}
    original_shape = np.shape(logits)
    logits, dtype = v.as_kernel_input(logits, "logits")
    target = v.second_rows_operand(target, "target", dtype)
    v.check_same_shape(logits, target, "logits", "target")
    reduction = v.check_reduction(reduction)
    gradient = _gradient_buffer(return_grad, grad_out, logits, operands, dtype)
    # Elementwise loss: any shape works as (rows, last axis); a 0-d input is one element.
    if logits.ndim == 0:
        logits, target = logits.reshape(1), target.reshape(1)
    row_scale = v.row_scale_of_temperature(temperature, logits.shape[:-1])
    axes = (logits.ndim - 1,)
    n_classes = logits.shape[-1]
    ones = _ones(n_classes, dtype).reshape(1, n_classes)
    weight2d = ones if weight is None else _elementwise_weight(
        weight, logits.shape, "weight", dtype)
    pos_weight2d = ones if pos_weight is None else _elementwise_weight(
        pos_weight, logits.shape, "pos_weight", dtype)
    x2d = _as_rows(logits, axes)
    target2d = _as_rows(target, axes)
    grad2d = _gradient_rows(None if gradient is None else gradient.reshape(logits.shape),
                            x2d, axes, (target2d, weight2d, pos_weight2d), dtype)
    loss2d = np.empty((x2d.shape[0], n_classes if reduction == "none" else 1), dtype)
    n_elements = logits.size
    grad_scale = 1.0 / n_elements if reduction == "mean" and n_elements else 1.0
    _run("bce_with_logits", "binary_cross_entropy_with_logits", backend, x2d,
         target2d, weight2d, pos_weight2d, loss2d, grad2d, grad_scale, row_scale=row_scale)
    if reduction == "none":
        loss = _scalar_or_array(loss2d.reshape(original_shape))
    else:
        loss = _reduce(loss2d, reduction, n_elements, dtype)
    if gradient is None:
        return loss
    if not np.shares_memory(grad2d, gradient):
        gradient[...] = grad2d.reshape(gradient.shape)
    return loss, gradient if grad_out is None else grad_out


# --- backward passes --------------------------------------------------------------

def _backward(kernel, dy, y, axis, out, backend):
    y, dtype = v.as_kernel_input(y, "y")
    dy = v.second_rows_operand(dy, "dy", dtype)
    v.check_same_shape(y, dy, "y", "dy")
    axes = v.normalize_axes(axis, y.ndim)
    out_view = _checked_out(out, y.shape, dtype, {"y": y, "dy": dy})
    # The kernel signature is (dy, y, out): dy goes first.
    result = _same_shape_op(kernel, kernel, dy, axes, out_view, backend, extra_inputs=(y,),
                            dtype=dtype)
    return _result_or_out(result, out)


def softmax_backward(dy, y, axis=-1, *, out=None, backend=None):
    """Vector-Jacobian product of softmax: given ``y = softmax(x)`` and the upstream
    gradient ``dy``, returns ``dL/dx = y * (dy - sum(dy * y))`` (torch autograd's value).

    >>> import numpy as np, logitcore
    >>> y = logitcore.softmax(np.array([0.0, 0.0]))
    >>> logitcore.softmax_backward(np.array([1.0, 0.0]), y)
    array([ 0.25, -0.25])
    """
    return _backward("softmax_backward", dy, y, axis, out, backend)


def log_softmax_backward(dy, y, axis=-1, *, out=None, backend=None):
    """Vector-Jacobian product of log_softmax: given ``y = log_softmax(x)`` and ``dy``,
    returns ``dL/dx = dy - exp(y) * sum(dy)``.

    >>> import numpy as np, logitcore
    >>> y = logitcore.log_softmax(np.array([0.0, 0.0]))
    >>> logitcore.log_softmax_backward(np.array([1.0, 0.0]), y)
    array([ 0.5, -0.5])
    """
    return _backward("log_softmax_backward", dy, y, axis, out, backend)
