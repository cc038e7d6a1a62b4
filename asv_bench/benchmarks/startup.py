"""What a new process pays: ``import logitcore``, and the first call of an op, with a
cold and with a warm Numba cache.

Each measurement runs in a fresh interpreter of the benchmarked environment. The
first-call latency is the wall time of the first ``logitcore.<op>(x, backend=...)`` after
``import logitcore`` on a 256×1000 float32 batch: loading the backend (for Numba: importing
numba, then compiling the kernel or loading it from the cache) plus one call. "Cold"
points ``NUMBA_CACHE_DIR`` at an empty directory; "warm" first fills that directory from
another process. The numpy and cython backends have no JIT and give the baseline.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from .common import LOGITCORE_BACKENDS, bench_module, check_backend

FIRST_CALL_OPS = ["logsumexp", "softmax", "cross_entropy"]

_FIRST_CALL_SCRIPT = """
import sys, time
import logitcore
from logitcore import bench
op, backend = sys.argv[1:3]
x, labels = bench._make_data((256, 1000), "float32")
call = bench.logitcore_runners(op, x, labels, backend)
start = time.perf_counter()
call()
print(repr(time.perf_counter() - start))
"""


def timeraw_import_logitcore():
    """``import logitcore`` in a fresh interpreter (it must not import numba)."""
    return "import logitcore"


def first_call_seconds(op, backend, numba_cache_dir):
    """Seconds of the first ``op`` call on ``backend`` in a fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=numba_cache_dir)
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL_SCRIPT, op, backend],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"first call of {op} on {backend} failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


class FirstCall:
    params = [LOGITCORE_BACKENDS, FIRST_CALL_OPS]
    param_names = ["backend", "op"]
    unit = "seconds"
    timeout = 900

    def setup(self, backend, op):
        bench_module()
        check_backend(backend)
        self.numba_cache_dir = tempfile.mkdtemp(prefix="logitcore-asv-numba-cache-")

    def teardown(self, backend, op):
        # asv calls teardown after a skip in setup too: there may be no directory.
        if hasattr(self, "numba_cache_dir"):
            shutil.rmtree(self.numba_cache_dir, ignore_errors=True)

    def track_first_call_cold_numba_cache(self, backend, op):
        return first_call_seconds(op, backend, self.numba_cache_dir)

    def track_first_call_warm_numba_cache(self, backend, op):
        first_call_seconds(op, backend, self.numba_cache_dir)  # fills the cache
        return first_call_seconds(op, backend, self.numba_cache_dir)
