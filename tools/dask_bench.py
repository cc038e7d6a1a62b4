"""Benchmark (not a test): logitcore.dask on a LocalCluster against the in-memory call.

    python tools/dask_bench.py                      # 524288 x 1000 float32 (2 GB)
    python tools/dask_bench.py --rows 65536 --repeats 3 --chunk-rows 8192 32768

For ``score`` (all fields with labels, reduced to the summary: what ``logitcore score``
computes) and ``logsumexp`` (the per-row vector, gathered to the client), it times:

* the in-memory call on 1 thread (``logitcore.config(n_threads=1)``), the data in this
  process;
* Dask with 1 worker process x 1 thread, and 2 worker processes x 1 thread, the same data
  already in the workers' memory (``persist``: the timings are the computation, not the
  transfer of 2 GB into the cluster), for each ``--chunk-rows``.

The data are the same bits everywhere: each chunk is generated from its own seed, in the
workers by the same function as in this process. Medians of ``--repeats`` runs (after one
warm-up), and the two ratios of the brief: speed-up of 2 workers over 1 (target >= 1.7x)
and the slowdown of 1 Dask worker over the in-memory call (target <= 1.3x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _block(start: int, stop: int, n_classes: int, seed: int) -> np.ndarray:
    """Rows [start, stop): float32 logits from a generator seeded by the row range."""
    rng = np.random.default_rng([seed, start])
    return (rng.standard_normal((stop - start, n_classes), dtype=np.float32) * 3)


def _labels(n_rows: int, n_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 1 << 40]).integers(0, n_classes, n_rows)


def _median_seconds(function, repeats: int, cpu_clock=time.process_time):
    """(median wall seconds, median CPU seconds) of ``function`` after one warm-up.
    ``cpu_clock`` returns the CPU seconds of every process doing the work (for Dask:
    the workers' and this client's), a figure that a busy machine inflates far less
    than the wall time."""
    function()  # warm-up: compilation, first touches
    times, cpu = [], []
    for _ in range(repeats):
        cpu_started = cpu_clock()
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
        cpu.append(cpu_clock() - cpu_started)
    return statistics.median(times), statistics.median(cpu)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=524288)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ops", nargs="+", default=["score", "logsumexp"],
                        choices=["score", "logsumexp"])
    parser.add_argument("--backend", default=None)
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    import distributed

    import logitcore as lc
    import logitcore.dask as ld

    seed = 2026
    n, c = args.rows, args.classes
    labels = _labels(n, c, seed)
    gb = n * c * 4 / 1e9
    print(f"{n} x {c} float32 ({gb:.2f} GB), medians of {args.repeats} runs; "
          f"backend {args.backend or 'auto'}")

    # in memory, 1 thread: the chunk generator over the whole range, the same bits
    step = max(args.chunk_rows)
    x = np.concatenate([_block(s, min(s + step, n), c, seed) for s in range(0, n, step)])
    # 1 thread: what one 1-thread worker is compared with; 2 threads: what this machine
    # gives the same call on twice the cores (the ceiling for 2 workers x 1 thread)
    in_memory, in_memory_2t = {}, {}
    for n_threads, timed in ((1, in_memory), (2, in_memory_2t)):
        with lc.config(n_threads=n_threads):
            timed["score"] = _median_seconds(
                lambda: lc.score(x, labels, backend=args.backend).summary(), args.repeats)
            timed["logsumexp"] = _median_seconds(
                lambda: lc.logsumexp(x, backend=args.backend), args.repeats)
    del x

    def dask_array(chunk_rows):
        # chunks of chunk_rows generated in the workers; the generator's row ranges are
        # those of the in-memory array (step), cut into chunk_rows
        parts = []
        for s in range(0, n, step):
            block = da.from_delayed(dask.delayed(_block, pure=True)(
                s, min(s + step, n), c, seed), shape=(min(s + step, n) - s, c),
                dtype=np.float32)
            parts.append(block)
        return da.concatenate(parts).rechunk((chunk_rows, c))

    rows = []
    for n_workers in (1, 2):
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                      processes=True, dashboard_address=None,
                                      memory_limit=0) as cluster, \
                distributed.Client(cluster) as client:
            def cpu_clock():
                workers = client.run(time.process_time)
                return sum(workers.values()) + time.process_time()

            for chunk_rows in args.chunk_rows:
                d = client.persist(dask_array(chunk_rows))
                distributed.wait(d)
                y = da.from_array(labels, chunks=(chunk_rows,)).persist()
                timings = {
                    "score": lambda: ld.score(d, y, backend=args.backend).summary().compute(),
                    "logsumexp": lambda: ld.logsumexp(d, backend=args.backend).compute(),
                }
                for op in args.ops:
                    rows.append((op, n_workers, chunk_rows,
                                 _median_seconds(timings[op], args.repeats, cpu_clock)))
                del d, y
                client.run(lambda: __import__("gc").collect())

    print()
    print("wall seconds (CPU seconds of all the processes doing the work)")
    print(f"{'op':<10} {'chunk rows':>10} {'MB/chunk':>9} {'in-memory 1t':>16} "
          f"{'dask 1x1':>16} {'dask 2x1':>16} {'2 vs 1 wkr':>11} {'1 wkr/in-mem':>13} "
          f"{'CPU 1 wkr/in-mem':>17} {'in-mem 2t vs 1t':>16}")
    for op in args.ops:
        for chunk_rows in args.chunk_rows:
            one = next(t for o, w, r, t in rows if (o, w, r) == (op, 1, chunk_rows))
            two = next(t for o, w, r, t in rows if (o, w, r) == (op, 2, chunk_rows))
            mem = in_memory[op]
            cells = "".join(f" {wall:>7.3f}s ({cpu:>5.2f})" for wall, cpu in (mem, one, two))
            print(f"{op:<10} {chunk_rows:>10} {chunk_rows * c * 4 / 2**20:>9.0f}{cells} "
                  f"{one[0] / two[0]:>10.2f}x {one[0] / mem[0]:>12.2f}x "
                  f"{one[1] / mem[1]:>16.2f}x {mem[0] / in_memory_2t[op][0]:>15.2f}x")
    print("\ntargets: 2 vs 1 worker >= 1.7x; 1 worker / in-memory <= 1.3x. The last "
          "column is the same\nin-memory call on 2 threads vs 1: what the machine's "
          "cores and memory allow 2 workers.")


if __name__ == "__main__":
    main()
