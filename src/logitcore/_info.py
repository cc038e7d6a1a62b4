"""What is installed, what is available, and what the machine offers."""

from __future__ import annotations

import platform
import sys

from . import _backends, _config


def cpu_simd_level() -> str:
    """Widest x86 SIMD extension the CPU reports ("avx512f", "avx2", ...)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return platform.machine() or "unknown"
    for level in ("avx512f", "avx2", "avx", "sse4_2", "sse2"):
        if level in flags:
            return level + ("+fma" if level.startswith("avx") and "fma" in flags else "")
    return platform.machine() or "unknown"


def _backend_details(name: str, module) -> dict:
    """Backend-specific facts: numba's version and threading layer, OpenMP state..."""
    details = {}
    if name == "numba":
        import numba

        details["version"] = numba.__version__
        details["threading_layer"] = module.threading_layer_name()
    elif name == "cython":
        details["openmp"] = bool(getattr(module, "OPENMP_ENABLED", False))
        details["simd_path"] = getattr(module, "SIMD_PATH", "unknown")
    return details


def backend_info() -> list[dict]:
    """One dict per backend: name, available, reason (when not), kernels, details.

    >>> import logitcore
    >>> [b["name"] for b in logitcore.backend_info()][:1]
    ['numpy']
    """
    rows = []
    for name in _backends.valid_names():
        available, reason = _backends.availability(name)
        row = {"name": name, "available": available, "reason": reason}
        if available:
            module = _backends.load(name)
            row["kernels"] = sorted(getattr(module, "SUPPORTED_KERNELS", ()))
            row.update(_backend_details(name, module))
        rows.append(row)
    return rows


def info_dict() -> dict:
    import numpy as np

    from . import __version__

    return {
        "logitcore": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_simd": cpu_simd_level(),
        "usable_cpus": _config.usable_cpu_count(),
        "n_threads": _config.get_num_threads(),
        "backend": _config.get_backend(),
        "backends": backend_info(),
    }


def show_config(file=None) -> None:
    """Print versions, backends (and why any is unavailable), threads and SIMD level."""
    info = info_dict()
    out = file or sys.stdout
    for key in ("logitcore", "python", "numpy", "platform", "cpu_simd", "usable_cpus",
                "n_threads", "backend"):
        print(f"{key:<12} {info[key]}", file=out)
    print("backends:", file=out)
    for row in info["backends"]:
        if row["available"]:
            extras = ", ".join(f"{k}={v}" for k, v in row.items()
                               if k not in ("name", "available", "reason", "kernels"))
            status = "available" + (f" ({extras})" if extras else "")
        else:
            status = f"NOT available: {row['reason']}"
        print(f"  {row['name']:<8} {status}", file=out)
