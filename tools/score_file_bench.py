"""Memory and throughput of `logitcore score` on a large .npy file (not a test).

    python tools/score_file_bench.py                      # 1048576 x 1000 float32: 4.2 GB
    python tools/score_file_bench.py --rows 65536 --keep  # smaller, keep the files

    python tools/score_file_bench.py --rows 262144 --formats npz   # 1 GB, .npz out only

1. Writes the logits (float32, normal * 3) and labels as .npy files chunk by chunk into
   --dir, then reads the logits once so that they are in the page cache.
2. For each output format (--formats: parquet, npz, csv), runs `logitcore score FILE
   --labels LABELS -o OUT.FORMAT --summary OUT.json -q` at default settings under
   `/usr/bin/time -v`: peak RSS, the scoring pass's wall seconds (from the summary),
   the process's wall and CPU seconds (user + system), rows/s.
3. In a fresh process, loads the whole file into memory and calls logitcore.score (and
   .summary()) on the same rows, in the chunks the CLI used (so the comparison isolates
   what streaming adds: reading, threads, writing): wall and CPU seconds of that loop.
4. Prints each and the ratios (wall: the scoring pass vs the in-memory loop; CPU: the
   whole CLI process vs the loop), and deletes the files (unless --keep).

Best of --repeat runs of each. The machine may be shared: wall-clock figures then include
time other processes took, so CPU seconds are printed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IN_MEMORY = r"""
import json, sys, time, numpy as np, logitcore
path, labels_path, chunk_rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
logits, labels = np.load(path), np.load(labels_path)
wall, cpu = time.perf_counter(), time.process_time()
for start in range(0, len(logits), chunk_rows):
    s = logitcore.score(logits[start:start + chunk_rows], labels[start:start + chunk_rows])
    s.summary()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rows": len(logits)}))
"""


def write_inputs(folder: Path, n_rows: int, n_classes: int) -> tuple[Path, Path]:
    logits_path, labels_path = folder / "bench_logits.npy", folder / "bench_labels.npy"
    rng = np.random.default_rng(0)
    block = max(1, (64 << 20) // (4 * n_classes))
    with open(logits_path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {
            "descr": "<f4", "fortran_order": False, "shape": (n_rows, n_classes)})
        for start in range(0, n_rows, block):
            rows = min(block, n_rows - start)
            chunk = rng.standard_normal((rows, n_classes), dtype=np.float32)
            chunk *= np.float32(3.0)
            file.write(chunk.data)
    np.save(labels_path, rng.integers(0, n_classes, n_rows))
    return logits_path, labels_path


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as file:
        while file.read(64 << 20):
            pass


def run_cli(logits_path: Path, labels_path: Path, folder: Path, fmt: str) -> dict:
    out, summary = folder / f"bench_scores.{fmt}", folder / "bench_summary.json"
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "logitcore", "score",
               str(logits_path), "--labels", str(labels_path), "-o", str(out),
               "--summary", str(summary), "--quiet", "--overwrite"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"logitcore score failed:\n{result.stderr}")
    report = result.stderr

    def field(name):
        return re.search(rf"{re.escape(name)}: (.+)", report).group(1).strip()

    minutes, _, seconds = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").rpartition(":")
    document = json.loads(summary.read_text())
    out.unlink()
    summary.unlink()
    return {"peak_rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
            "process_wall_s": float(minutes or 0) * 60 + float(seconds),
            "cpu_s": float(field("User time (seconds)")) + float(field("System time (seconds)")),
            "scoring_wall_s": document["seconds"], "rows_per_s": document["rows_per_s"],
            "gb_per_s": document["gb_per_s"], "chunk_rows": document["chunk_rows"]}


def run_in_memory(logits_path: Path, labels_path: Path, chunk_rows: int) -> dict:
    result = subprocess.run([sys.executable, "-c", IN_MEMORY, str(logits_path),
                             str(labels_path), str(chunk_rows)],
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout)
    figures["rows_per_s"] = figures["rows"] / figures["wall_s"]
    return figures


def best_of(repeat: int, measure, key: str) -> dict:
    return min((measure() for _ in range(repeat)), key=lambda figures: figures[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 20)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true", help="keep the input files")
    parser.add_argument("--skip-in-memory", action="store_true")
    parser.add_argument("--formats", nargs="+", default=["parquet", "npz"],
                        choices=["parquet", "npz", "csv"])
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    args = parser.parse_args()
    folder = Path(args.dir)
    logits_path, labels_path = folder / "bench_logits.npy", folder / "bench_labels.npy"
    try:
        if not logits_path.exists():
            started = time.perf_counter()
            write_inputs(folder, args.rows, args.classes)
            print(f"wrote {logits_path} ({logits_path.stat().st_size / 1e9:.2f} GB) in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        warm_page_cache(logits_path)
        results = {}
        for fmt in args.formats:
            cli = results[fmt] = best_of(
                args.repeat, lambda: run_cli(logits_path, labels_path, folder, fmt),
                "scoring_wall_s")
            print(f"logitcore score -o .{fmt} (default settings): peak RSS "
                  f"{cli['peak_rss_mb']:.0f} MB, {cli['scoring_wall_s']:.2f} s wall for the "
                  f"scoring pass ({cli['rows_per_s']:,.0f} rows/s, {cli['gb_per_s']:.3f} "
                  f"GB/s), process {cli['process_wall_s']:.2f} s wall / {cli['cpu_s']:.2f} s "
                  f"CPU, chunks of {cli['chunk_rows']} rows", flush=True)
        if not args.skip_in_memory:
            chunk_rows = results[args.formats[0]]["chunk_rows"]
            memory = results["in_memory"] = best_of(
                args.repeat, lambda: run_in_memory(logits_path, labels_path, chunk_rows),
                "wall_s")
            print(f"in-memory score() on the same rows and chunks: {memory['wall_s']:.2f} s "
                  f"wall / {memory['cpu_s']:.2f} s CPU ({memory['rows_per_s']:,.0f} rows/s)")
            for fmt in args.formats:
                cli = results[fmt]
                print(f"streaming .{fmt} / in-memory: "
                      f"{cli['scoring_wall_s'] / memory['wall_s']:.2f}x wall (scoring pass), "
                      f"{cli['cpu_s'] / memory['cpu_s']:.2f}x CPU (whole process)")
        print(json.dumps(results))
    finally:
        if not args.keep:
            for path in (logits_path, labels_path):
                if path.exists():
                    os.unlink(path)


if __name__ == "__main__":
    main()
