"""Command line: `logitcore info` and `logitcore bench`."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, classes = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 65536x1000, got {text!r}")
    if rows < 1 or classes < 1:
        raise argparse.ArgumentTypeError(f"shape must be positive, got {text!r}")
    return rows, classes


def _build_parser() -> argparse.ArgumentParser:
    from . import bench

    parser = argparse.ArgumentParser(prog="logitcore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backends (and why any is unavailable), "
                                     "threads, CPU SIMD level")
    b = commands.add_parser("bench", help="time every backend and installed peer")
    b.add_argument("--shape", type=_shape, action="append",
                   help="rows x classes, e.g. 65536x1000 (repeatable); default: the reference "
                        "reference shapes")
    b.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16"],
                   action="append",
                   help="repeatable; default float32 and float64 (bfloat16 needs ml_dtypes)")
    b.add_argument("--ops", nargs="+", choices=sorted(bench.OPS), default=None,
                   help=f"default: {' '.join(bench.DEFAULT_OPS)}")
    b.add_argument("--backends", nargs="+", default=None,
                   help="logitcore backends to time (default: every available one)")
    b.add_argument("--threads", type=int, default=None, help="default: logitcore's setting")
    b.add_argument("--repeat", type=int, default=5, help="minimum timed repeats per case")
    b.add_argument("--no-peers", action="store_true", help="time logitcore only")
    b.add_argument("--quick", action="store_true",
                   help="small shapes, float32 only, fewer repeats (about a minute)")
    b.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    return parser


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "info":
        from ._info import show_config

        show_config()
        return 0

    from . import bench

    shapes = args.shape or (bench.QUICK_SHAPES if args.quick else bench.REFERENCE_SHAPES)
    dtypes = [bench.bench_dtype(d) for d in (args.dtype or (["float32"] if args.quick
                                                            else ["float32", "float64"]))]
    budget = 0.3 if args.quick else 1.0
    repeats = min(args.repeat, 3) if args.quick else args.repeat
    print(f"logitcore bench: {len(shapes)} shape(s) x {len(dtypes)} dtype(s); "
          "progress on stderr", file=sys.stderr)
    rows, meta = bench.run(shapes, dtypes, args.ops or bench.DEFAULT_OPS,
                           n_threads=args.threads, repeats=repeats, budget_s=budget,
                           backends=args.backends, peers=not args.no_peers)
    print(bench.format_table(rows, meta))
    print()
    print("Summary: logitcore against torch (× > 1: logitcore is faster)")
    print()
    print(bench.summary_table(rows))
    if args.json:
        bench.write_json(args.json, rows, meta)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
