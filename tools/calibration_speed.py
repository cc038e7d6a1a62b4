"""CPU and wall time (best of N) of fit_temperature, calibration_error from logits and from a
Scores, on the bench's calibration data: `python tools/calibration_speed.py 1048576x10 5`.
Run it with PYTHONPATH=<other checkout>/src to compare two builds, alternating runs."""
import sys, time, numpy as np
import logitcore as lc
from logitcore import _calibration, _score
from logitcore.bench import _make_data, CALIBRATION_LABEL_BOOST
shape = tuple(int(s) for s in sys.argv[1].split("x")); reps = int(sys.argv[2])
x, y = _make_data(shape, np.float32); x[np.arange(shape[0]), y] += CALIBRATION_LABEL_BOOST
s = _score.score(x, y, fields=("confidence", "correct", "kept"))
calls = {"fit": lambda: _calibration.fit_temperature(x, y),
         "ece_logits": lambda: _calibration.calibration_error(x, y),
         "ece_scores": lambda: _calibration.calibration_error(s)}
for name, f in calls.items():
    f()
    best_cpu = best_wall = 1e9
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        r = f()
        best_cpu = min(best_cpu, time.process_time() - c0); best_wall = min(best_wall, time.perf_counter() - w0)
    extra = f" passes={r.passes} T={r.temperature:.9g}" if name == "fit" else f" value={r:.12g}"
    print(f"{lc.__file__.split('/src/')[0]} {sys.argv[1]} {name} cpu_ms={best_cpu*1e3:.1f} wall_ms={best_wall*1e3:.1f}{extra}", flush=True)
