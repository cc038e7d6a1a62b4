"""Build of the compiled Cython/OpenMP backend. Everything else lives in pyproject.toml.

Environment switches:
    LOGITCORE_CYTHON_DEBUG=1    bounds and wraparound checks back on (slow; for debugging)
    LOGITCORE_DISABLE_OPENMP=1  build without OpenMP: the kernels run on one thread and
                                ``_cython_kernels.OPENMP_ENABLED`` is False

The extension is optional. Without a working C compiler, or without Cython, the install
still succeeds, without it (logitcore then reports the "cython" backend as unavailable);
if OpenMP cannot be linked it is built without OpenMP. Both cases print a warning.
"""

import os
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSION_NAME = "logitcore._backends._cython_kernels"
SOURCE_DIR = os.path.join("src", "logitcore", "_backends")


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def warn(message):
    bar = "*" * 78
    print(f"\n{bar}\nWARNING (logitcore): {message}\n{bar}\n", file=sys.stderr)


def openmp_flags(compiler_type):
    """(compile flags, link flags) that turn OpenMP on for this compiler."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":  # Apple clang: OpenMP runtime from Homebrew's libomp
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def optimisation_flags(compiler_type):
    """Flags for fast, still IEEE-correct math.

    Not -ffast-math: it assumes no inf or NaN and breaks -inf masks. -fno-math-errno and
    -fno-trapping-math are safe subsets that let gcc vectorise selects and inline math.
    The reductions in fast_math.h use explicit partial sums, so no reassociation flag.
    """
    if compiler_type == "msvc":
        return ["/O2"]
    return ["-O3", "-fno-math-errno", "-fno-trapping-math"]


class OptionalBuildExt(build_ext):
    """build_ext that adds per-compiler flags, and skips the extension instead of failing."""

    def build_extensions(self):
        compiler_type = self.compiler.compiler_type
        if not self._compiles("int main(void) { return 0; }", [], []):
            warn("no working C compiler found: logitcore is installed without its compiled "
                 "Cython backend (the numpy and numba backends still work).")
            self.extensions = []
            return
        use_openmp = not env_flag("LOGITCORE_DISABLE_OPENMP")
        compile_openmp, link_openmp = openmp_flags(compiler_type)
        openmp_probe = textwrap.dedent("""
            #include <omp.h>
            int main(void) {
                int threads = 0;
                #pragma omp parallel reduction(+:threads)
                threads += 1;
                return threads > 0 ? 0 : 1;
            }
        """)
        if use_openmp and not self._compiles(openmp_probe, compile_openmp, link_openmp):
            warn(f"OpenMP could not be linked with {compile_openmp + link_openmp}: the Cython "
                 "backend is built without it and runs on one thread "
                 "(on macOS: brew install libomp).")
            use_openmp = False
        for ext in self.extensions:
            ext.extra_compile_args += optimisation_flags(compiler_type)
            if use_openmp:
                ext.extra_compile_args += compile_openmp
                ext.extra_link_args += link_openmp
        try:
            super().build_extensions()
        except Exception as exc:  # compiler crash, missing headers, ...: still install
            warn(f"building the Cython backend failed ({exc}); logitcore is installed "
                 "without it.")
            self.extensions = []

    def _compiles(self, source, compile_args, link_args):
        """Whether a tiny C program compiles and links with these flags."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "probe.c")
            with open(path, "w") as f:
                f.write(source)
            try:
                objects = self.compiler.compile([path], output_dir=tmp, extra_postargs=compile_args)
                self.compiler.link_executable(objects, "probe", output_dir=tmp,
                                              extra_postargs=link_args)
            except Exception:
                return False
        return True


def extensions():
    try:
        import numpy
    except ImportError:
        warn("numpy is not installed, so the Cython backend is not built "
             "(pip installs with build isolation get it from pyproject.toml).")
        return []
    pyx_source = os.path.join(SOURCE_DIR, "_cython_kernels.pyx")
    # An sdist may carry only the C file Cython generated from the .pyx.
    source = pyx_source if os.path.exists(pyx_source) else pyx_source[:-len(".pyx")] + ".c"
    extension = Extension(
        EXTENSION_NAME,
        sources=[source],
        include_dirs=[SOURCE_DIR, numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=[os.path.join(SOURCE_DIR, "fast_math.h")],
    )
    if not source.endswith(".pyx"):
        return [extension]
    try:
        from Cython.Build import cythonize
    except ImportError:
        warn("Cython is not installed, so the Cython backend is not built "
             "(pip installs with build isolation get it from pyproject.toml).")
        return []
    debug = env_flag("LOGITCORE_CYTHON_DEBUG")
    return cythonize(
        [extension],
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": debug,
            "initializedcheck": debug,
            "cdivision": True,
        },
        # regenerate every time: the C file would otherwise be reused after the
        # directives change (a debug build, then a normal one)
        force=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
