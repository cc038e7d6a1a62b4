"""Backend registry: name -> kernel module, loaded lazily.

The kernel contract
-------------------
The public API (``logitcore._ops``) reduces every call to 2-D problems with the class axis
last and calls one of the kernels below. Every backend module implements the same
functions with the same signatures. All arrays handed to a kernel are

* C-contiguous, of one floating dtype (float32 or float64) per call, except that in a
  float32 call the inputs read like the logits (roles ``rows`` and ``flat``) may be
  float16 or bfloat16, which the kernels widen themselves (docs/architecture.md,
  "Half-precision input and the dtype policy");
* already validated: shapes agree, labels are in ``[0, n_classes)`` or equal to
  ``ignore_index`` (``label_stats`` below checks that), weights are finite;
* preallocated outputs, which may *be* the input (in-place softmax, gradient over the
  logits), but never overlap it partially.

Kernels write into their outputs and return ``None``. ``n_threads`` is the number of
threads the kernel may use. Rows are independent.

The kernels, their arguments and what each computes are listed once, in the op table
(``op_table.py`` beside this file); ``op_table.check_backend`` checks a backend against it.
Each module lists what it implements in ``SUPPORTED_KERNELS``; asking a named backend
for a kernel it lacks raises ``NotImplementedError``; ``backend="auto"`` skips it.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading

from . import op_table

# Order in which "auto" tries the backends (see _config.AUTO_PREFERENCE for the
# per-kernel evidence). "numpy" is the reference and is always available.
BACKEND_NAMES = ("numpy", "numba", "cython")

_MODULE_PATHS = {
    "numpy": "logitcore._backends.numpy_ref",
    "numba": "logitcore._backends.numba_kernels",
    "cython": "logitcore._backends._cython_kernels",
}

# Backends registered at run time (tests use this to count dispatches). Every
# (un)registration calls the registry listeners, which drop the choices cached from it.
_extra_backends: dict[str, object] = {}
_loaded: dict[str, object] = {}
_unavailable_reason: dict[str, str] = {}
_load_lock = threading.Lock()


def valid_names() -> tuple[str, ...]:
    return BACKEND_NAMES + tuple(_extra_backends)


_registry_listeners: list = []


def on_registry_change(listener) -> None:
    """Call ``listener()`` whenever a backend is registered or unregistered."""
    _registry_listeners.append(listener)


def register_backend(name: str, module) -> None:
    """Add a backend object (anything with the kernel functions and SUPPORTED_KERNELS)."""
    if name in BACKEND_NAMES or name == "auto":
        raise ValueError(f"backend name {name!r} is reserved")
    _extra_backends[name] = module
    for listener in _registry_listeners:
        listener()


def unregister_backend(name: str) -> None:
    _extra_backends.pop(name, None)
    for listener in _registry_listeners:
        listener()


def _check_importable(name: str) -> str | None:
    """Return why backend ``name`` cannot load, without importing heavy modules."""
    if name == "numba" and importlib.util.find_spec("numba") is None:
        return "numba is not installed (pip install numba)"
    return None


def load(name: str):
    """Return the backend module, importing it on first use.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` (with the reason)
    for a known backend that cannot be loaded.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name in _extra_backends:
        return _extra_backends[name]
    module = _loaded.get(name)
    if module is not None:
        return module
    if name not in _MODULE_PATHS:
        raise ValueError(
            f"unknown backend {name!r}; valid backends are "
            f"{', '.join(repr(n) for n in valid_names() + ('auto',))}"
        )
    reason = availability(name)[1]
    if reason is not None:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return _loaded[name]


def availability(name: str) -> tuple[bool, str | None]:
    """(available, reason-if-not). Imports the backend the first time it is asked."""
    if name in _extra_backends:
        return True, None
    if name in _loaded:
        return True, None
    if name in _unavailable_reason:
        return False, _unavailable_reason[name]
    with _load_lock:
        if name in _loaded:
            return True, None
        reason = _check_importable(name)
        if reason is None:
            try:
                _loaded[name] = importlib.import_module(_MODULE_PATHS[name])
                return True, None
            except ImportError as exc:
                if name == "cython":
                    reason = (
                        "the compiled extension is missing (the package was installed "
                        f"without building it: {exc})"
                    )
                else:
                    reason = f"import failed: {exc}"
        _unavailable_reason[name] = reason
        return False, reason


def is_available(name: str) -> bool:
    return availability(name)[0]


def supports(module, kernel: str) -> bool:
    return kernel in getattr(module, "SUPPORTED_KERNELS", ())
