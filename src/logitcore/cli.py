"""Command line: `logitcore info`, `logitcore bench` and `logitcore score`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

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
    _add_score_parser(commands)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _dimensions(text: str) -> tuple[int, ...]:
    """A raw file's shape: 1000000x1000, 1000000,1000 or -1x1000 (rows from the size)."""
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d < -1 for d in shape):
        raise argparse.ArgumentTypeError(f"shape must look like 1000000x1000 (or -1x1000), "
                                         f"got {text!r}")
    return shape


def _threshold(text: str):
    """One probability, or one per class separated by commas (multilabel)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must be a number or numbers separated "
                                         f"by commas, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _add_score_parser(commands) -> None:
    from ._score import KINDS
    from ._score_files import DEFAULT_MEMORY_MB, LOGIT_DTYPE_NAMES

    s = commands.add_parser(
        "score", help="score a logit file of any size into Parquet, .npz or CSV",
        description="Score every row of a logit file with logitcore.score, chunk by chunk "
                    "in bounded memory, into Parquet, .npz or CSV (by the extension of -o), "
                    "with the dataset summary on stdout and optionally as JSON. Exit "
                    "status: 0 done, 1 bad input, 2 bad options, 130 / 143 interrupted "
                    "(no output is left behind).")
    s.add_argument("input", nargs="?", metavar="INPUT",
                   help="logits: FILE.npy, FILE.npz[:NAME], FILE.safetensors[:NAME], "
                        "FILE.parquet[:COLUMN] (a fixed-size-list column), or raw binary "
                        "with --dtype and --shape; float16, bfloat16, float32 or float64")
    s.add_argument("--labels", metavar="FILE",
                   help="labels, one per row: .npy, .npz[:NAME], .safetensors[:NAME], "
                        ".parquet[:COLUMN], or text with one integer per line (multilabel: "
                        "a 0 / 1 array of the logits' shape)")
    s.add_argument("-o", "--output", metavar="OUT",
                   help="OUT.parquet (top-k as fixed-size-list columns), OUT.npz or OUT.csv")
    s.add_argument("--kind", choices=KINDS, default="multiclass")
    s.add_argument("--top-k", type=int, default=0, metavar="K")
    s.add_argument("--threshold", type=_threshold, default=0.5,
                   help="binary / multilabel decision probability (multilabel: one per "
                        "class, comma-separated); default 0.5")
    s.add_argument("--ignore-index", type=int, default=-100, metavar="LABEL",
                   help="label of rows left out of the label fields (default -100)")
    s.add_argument("--fields", type=lambda text: text.split(","), metavar="A,B,...",
                   help="the fields to compute and write (default: every one that applies)")
    s.add_argument("--summary", metavar="FILE.json",
                   help="also write the summary figures, rows, seconds, rows/s and GB/s")
    calibrate = s.add_mutually_exclusive_group()
    calibrate.add_argument("--temperature", type=float, metavar="T",
                           help="score softmax(logits / T) (sigmoid for binary / "
                                "multilabel); T > 0")
    calibrate.add_argument("--fit-temperature", nargs=2,
                           metavar=("VAL_LOGITS", "VAL_LABELS"),
                           help="fit T by NLL on validation logits and labels (any input "
                                "format; streamed chunk by chunk within --memory, "
                                "as logitcore.fit_temperature fits), then score with it")
    calibrate.add_argument("--tune-thresholds", nargs=2,
                           metavar=("VAL_LOGITS", "VAL_LABELS"),
                           help="binary / multilabel: tune a threshold per class on "
                                "validation logits and labels (read whole, within --memory) "
                                "with logitcore.tune_thresholds, score with them instead of "
                                "--threshold, and report them in the summary")
    s.add_argument("--threshold-metric", choices=("f1", "balanced_accuracy", "youden_j"),
                   help="what --tune-thresholds maximises (default f1)")
    s.add_argument("--plot", metavar="FILE.png",
                   help="draw the reliability diagram of the scored rows (.png, .svg or "
                        ".pdf; needs --labels and matplotlib)")
    s.add_argument("--threads", type=_positive_int, metavar="N")
    s.add_argument("--backend", metavar="NAME", help="numpy, numba, cython or auto")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--chunk-rows", type=_positive_int, metavar="N",
                      help="rows per chunk (default: from --memory)")
    size.add_argument("--memory", type=_positive_int, metavar="MB", default=DEFAULT_MEMORY_MB,
                      help=f"memory for the chunks in flight and their scoring "
                           f"(default {DEFAULT_MEMORY_MB})")
    s.add_argument("--dtype", choices=LOGIT_DTYPE_NAMES,
                   help="raw binary input's dtype (or bfloat16 for a .npy of 2-byte voids)")
    s.add_argument("--shape", type=_dimensions, metavar="ROWSxCLASSES",
                   help="raw binary input's shape; --shape=-1x1000 takes the rows from the size")
    s.add_argument("--dask", metavar="ADDRESS",
                   help="run on a Dask cluster (a scheduler address, or local:N for a "
                        "LocalCluster of N 1-thread workers); OUT is a directory of "
                        "Parquet parts (docs/dask.md)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary on stdout")
    s.add_argument("--demo", action="store_true",
                   help="score built-in logits of an over-confident classifier, made on the "
                        "fly: fit a temperature on a validation part, score the rest with "
                        "it into scores.parquet, summary.json and reliability.png in -o DIR "
                        "(default: a new temporary directory)")
    s.add_argument("--demo-rows", type=_positive_int, default=1_000_000, metavar="N",
                   help="rows of the demo (100 classes each; default 1000000, 400 MB)")


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "score":
        return _score(parser, args)
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


def _score(parser, args) -> int:
    """`logitcore score`: every failure is one line on stderr and an exit status."""
    from . import _score_files as files

    if args.demo == (args.input is not None):
        parser.error("score needs INPUT and -o OUT, or --demo")
    if not args.demo and args.output is None:
        parser.error("score needs -o OUT (a .parquet, .npz or .csv path)")
    if args.threshold_metric and not args.tune_thresholds:
        parser.error("--threshold-metric is what --tune-thresholds maximises: pass both")
    try:
        if args.dask is not None and not args.demo:
            return _score_dask(args)
        if args.dask is not None:
            raise files.InputError("--demo does not work with --dask")
        return _score_demo(args) if args.demo else _score_file(args)
    except files.InputError as error:
        print(f"logitcore score: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("logitcore score: interrupted (SIGINT); no output written", file=sys.stderr)
        return 130
    except files.Terminated:
        print("logitcore score: terminated (SIGTERM); no output written", file=sys.stderr)
        return 143
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"logitcore score: error: {where}{error.strerror or error}", file=sys.stderr)
    except MemoryError:
        print("logitcore score: error: out of memory; lower --memory or --chunk-rows",
              file=sys.stderr)
    except Exception as error:  # never a traceback: one line naming what failed
        print(f"logitcore score: error: {type(error).__name__}: {error}", file=sys.stderr)
    return 1


def _score_options(args, **overrides) -> dict:
    options = dict(kind=args.kind, top_k=args.top_k, threshold=args.threshold,
                   ignore_index=args.ignore_index, fields=args.fields, backend=args.backend,
                   threads=args.threads, memory_bytes=args.memory * 2**20,
                   chunk_rows=args.chunk_rows, overwrite=args.overwrite,
                   progress=not args.quiet and sys.stderr.isatty())
    options.update(overrides)
    return options


def _score_file(args) -> int:
    from . import _score_files as files

    if args.summary and Path(args.summary).exists() and not args.overwrite:
        raise files.InputError(f"{args.summary}: exists; pass --overwrite to replace it")
    temperature = (None if args.temperature is None
                   else files.check_temperature(args.temperature))
    if args.plot:
        files.check_plot_path(Path(args.plot), args.kind, args.labels is not None,
                              args.overwrite)
    if args.tune_thresholds and args.kind == "multiclass":
        raise files.InputError("--tune-thresholds takes --kind binary or multilabel")
    dtype = files.dtype_named(args.dtype) if args.dtype else None
    logits = files.open_rows(args.input, kind=args.kind, for_labels=False, dtype=dtype,
                             shape=args.shape)
    labels = validation = tune = None
    try:
        if args.labels is not None:
            labels = files.open_rows(args.labels, kind=args.kind, for_labels=True)
        if args.fit_temperature:
            validation = _open_validation(args, args.fit_temperature)
        if args.tune_thresholds:
            tune = (_open_validation(args, args.tune_thresholds)
                    + (args.threshold_metric or "f1",))
    except BaseException:
        for source in (logits, labels, *(validation or ()), *(tune or ())[:2]):
            if source is not None:
                source.close()
        raise
    output = Path(args.output)
    document = files.run(logits, labels, output, temperature=temperature,
                         validation=validation, plot=args.plot, tune=tune,
                         **_score_options(args))
    if args.summary:
        files.write_json(Path(args.summary), document, args.overwrite)
    if not args.quiet:
        print(f"scored {document['rows']:,} rows of {document['input']} into {output}")
        print(files.format_summary(document))
        if document["calibration"]:
            print(files.format_calibration(document["calibration"]))
        if "thresholds" in document:
            tuned = document["thresholds"]
            value = np.nanmean(np.array(tuned["value"], dtype=float))
            print(f"thresholds tuned on {tuned['validation']} ({tuned['validation_rows']:,} "
                  f"rows): {tuned['metric']} {value:.4f}"
                  + (f" at logit {tuned['logit']}" if args.kind == "binary" else
                     " (mean over the classes; per class in --summary)"))
    return 0


def _score_dask(args) -> int:
    from . import _score_files as files

    try:
        from . import _score_files_dask as on_dask
    except ImportError as error:
        raise files.InputError(f"--dask needs dask and distributed: pip install "
                               f'"logitcore[dask]" ({error})') from None
    if args.summary and Path(args.summary).exists() and not args.overwrite:
        raise files.InputError(f"{args.summary}: exists; pass --overwrite to replace it")
    document = on_dask.run(args)
    if args.summary:
        files.write_json(Path(args.summary), document, args.overwrite)
    if not args.quiet:
        print(f"scored {document['rows']:,} rows of {document['input']} into "
              f"{args.output}/ ({document['dask']['parts']} Parquet parts) on Dask")
        print(files.format_summary(document))
    return 0


def _open_validation(args, specs):
    from . import _score_files as files

    logits_spec, labels_spec = specs
    logits = files.open_rows(logits_spec, kind=args.kind, for_labels=False)
    try:
        return logits, files.open_rows(labels_spec, kind=args.kind, for_labels=True)
    except BaseException:
        logits.close()
        raise


DEMO_SEED = 2017
DEMO_VALIDATION_SEED = 2018
DEMO_VALIDATION_ROWS = 100_000


def _score_demo(args) -> int:
    from . import _score_files as files

    files.require("matplotlib", "--demo's reliability diagram")
    folder = Path(args.output) if args.output else Path(
        tempfile.mkdtemp(prefix="logitcore-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    labels = files.demo_labels(args.demo_rows, DEMO_SEED)
    logits = files.DemoRows(labels, DEMO_SEED)
    # The validation part: the same classifier on other rows (another seed).
    validation_labels = files.demo_labels(min(args.demo_rows, DEMO_VALIDATION_ROWS),
                                          DEMO_VALIDATION_SEED)
    validation = (files.DemoRows(validation_labels, DEMO_VALIDATION_SEED),
                  files.ArrayRows("demo validation labels", validation_labels))
    validation[0].name = "demo validation logits"
    size_mb = logits.n_rows * logits.row_bytes / 1e6
    print(f"logitcore score --demo: {logits.n_rows:,} rows x {files.DEMO_CLASSES} classes of "
          f"float32 logits ({size_mb:,.0f} MB) from an over-confident classifier, made on "
          f"the fly; a temperature fitted on {len(validation_labels):,} validation rows, "
          f"then every row scored with it, top_k=5, into {folder}/", flush=True)
    plot = folder / "reliability.png"
    document = files.run(logits, files.ArrayRows("demo labels", labels),
                         folder / "scores.parquet", validation=validation, plot=plot,
                         **_score_options(args, kind="multiclass", top_k=5, fields=None,
                                          overwrite=True))
    files.write_json(folder / "summary.json", document, overwrite=True)
    calibration, figures = document["calibration"], document["summary"]
    print(f"before calibration (validation rows, T = 1): NLL {calibration['nll_before']:.4f}, "
          f"ECE {100 * calibration['ece_before']:.2f}%: the model is over-confident")
    print(f"after calibration (T = {calibration['temperature']:.4f}): validation NLL "
          f"{calibration['nll_after']:.4f}, ECE {100 * calibration['ece_after']:.2f}%")
    print("summary of the scored rows, with T applied:")
    print(files.format_summary(document))
    print(f"mean confidence {figures['mean_confidence']:.3f} against accuracy "
          f"{figures['accuracy']:.3f}, ECE {100 * figures['ece']:.2f}%")
    print(f"wrote {folder / 'scores.parquet'}, {folder / 'summary.json'} and {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
