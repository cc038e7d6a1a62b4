"""``logitcore score ... --dask ADDRESS`` (or ``--dask local:N``): the same job on Dask.

The input is read as a dask array by the workers themselves, one chunk of rows per task:
a ``.npy`` file through a read-only memory map of the chunk's rows (the file must be
visible to the workers at the same path: a shared or local file system), a Parquet file
one row group per chunk. Each chunk is scored by ``logitcore.dask.score`` (an in-memory
``score`` per row block, so every field is bit-identical to the in-memory CLI's on the
same backend), each block's fields are written by the worker that scored it as one part
file, and the summary is the tree merge of the blocks' ``Summary`` states
(``DaskScores.summary``): only those states travel to the client, never the rows.

Output: a directory ``OUT`` of Parquet part files ``part-00000.parquet``, ... (one per
chunk of rows, in row order: ``part-i`` holds the rows after those of ``part-0`` ..
``part-(i-1)``) with the columns of the in-memory CLI's single file. Nothing partial is
ever under the output name: the parts are written into ``.OUT.<pid>.partial`` next to
it, which is renamed to ``OUT`` once every part is written (and removed on failure).
Readers take the directory as one table: ``pyarrow.parquet.read_table(OUT)``,
``duckdb``'s ``read_parquet('OUT/*.parquet', filename=true, file_row_number=true)``
(``order by filename, file_row_number`` for the row order),
``dask.dataframe.read_parquet(OUT)``.

Options that need the whole file in one process (``--fit-temperature``, ``--plot``),
the other output formats and input formats, ``--threads`` (a task runs on its worker's
threads) and ``--memory`` are refused with one line (exit status 1).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import _config
from . import _score_files as files
from .dask import _task_threads  # noqa: F401  (the module needs dask: fail early)

# Rows per chunk when --chunk-rows is not given: chunks of about this many bytes of
# logits (tools/dask_bench.py: per-task overhead is amortised well above ~16 MB and
# a worker holds a few chunks at once).
CHUNK_BYTES = 64 << 20
PART_NAME = "part-{:05d}.parquet"


def check_options(args) -> None:
    """One InputError naming the first option that does not work with --dask."""
    refused = [("--fit-temperature", args.fit_temperature),
               ("--tune-thresholds", getattr(args, "tune_thresholds", None)),
               ("--plot", args.plot),
               ("--threads", args.threads), ("--shape", args.shape),
               ("--dtype", args.dtype),
               ("--memory", args.memory != files.DEFAULT_MEMORY_MB)]
    for option, given in refused:
        if given:
            raise files.InputError(
                f"{option} does not work with --dask (the job runs on the cluster's "
                f"workers; see docs/dask.md); drop it or run without --dask")
    suffix = Path(args.output).suffix.lower()
    if files.OUTPUT_FORMATS.get(suffix) != "parquet":
        raise files.InputError(f"{args.output}: --dask writes Parquet only (a directory "
                               f"of part files): name the output OUT.parquet")


# --- reading chunks on the workers ---------------------------------------------------------

def _npy_chunk(path: str, shape: tuple, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a .npy file, read through a memory map on the worker."""
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    return np.array(mapped.reshape(shape)[start:stop])


def _parquet_chunk(path: str, column: str, row_group: int, row_shape: tuple) -> np.ndarray:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        values = parquet.read_row_group(row_group, columns=[column]).column(0)
    if values.null_count:
        raise ValueError(f"{path}:{column}: has null rows; fill them first")
    values = values.combine_chunks()
    if row_shape:
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).reshape((-1,) + tuple(row_shape))


def _as_dask_rows(spec: str, source, chunk_rows: int | None):
    """The rows of an opened (and checked) source as a dask array read by the workers."""
    import dask
    import dask.array as da

    path, _ = files._split_member(spec)
    shape = (source.n_rows,) + tuple(source.row_shape)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        rows = chunk_rows or max(1, CHUNK_BYTES // max(source.row_bytes, 1))
        bounds = list(range(0, source.n_rows, rows)) + [source.n_rows]
        parts = [da.from_delayed(dask.delayed(_npy_chunk, pure=True)(
                     str(path.resolve()), shape, start, stop),
                     shape=(stop - start,) + shape[1:], dtype=source.dtype)
                 for start, stop in zip(bounds[:-1], bounds[1:]) if stop > start]
    elif suffix in (".parquet", ".pq"):
        metadata = source._file.metadata
        column = source._column
        parts = [da.from_delayed(dask.delayed(_parquet_chunk, pure=True)(
                     str(path.resolve()), column, group, tuple(source.row_shape)),
                     shape=(metadata.row_group(group).num_rows,) + shape[1:],
                     dtype=source.dtype)
                 for group in range(metadata.num_row_groups)
                 if metadata.row_group(group).num_rows]
    else:
        return None
    if not parts:
        raise files.InputError(f"{source.name}: has no rows")
    return da.concatenate(parts, axis=0)


def _open(spec, *, kind, for_labels):
    source = files.open_rows(spec, kind=kind, for_labels=for_labels)
    suffix = files._split_member(spec)[0].suffix.lower()
    if suffix not in (".npy", ".parquet", ".pq") and not (for_labels and isinstance(
            source, files._TextLabels)):
        source.close()
        raise files.InputError(f"{spec}: --dask reads .npy and Parquet files (and labels "
                               f"as text); convert it, or run without --dask")
    return source


def _labels_array(spec, source, chunks):
    """Labels as a dask array chunked like the logits' rows (a text file is read by the
    client: 8 bytes a row)."""
    import dask.array as da

    if isinstance(source, files._TextLabels):
        buffer = np.empty(source.n_rows * source.row_bytes, np.uint8)
        values = source.read_into(buffer, source.n_rows).copy()
        return da.from_array(values, chunks=chunks)
    return _as_dask_rows(spec, source, None).rechunk(chunks)


# --- writing parts on the workers ----------------------------------------------------------

def _write_part(scores, folder: str, index: int) -> int:
    """One block's fields as ``part-<index>.parquet`` in ``folder`` (the columns of the
    in-memory CLI's Parquet output); returns its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name, values in scores.to_dict().items():
        values = np.asarray(values).reshape((-1,) + np.shape(values)[len(scores.row_shape):])
        columns[name] = (pa.array(values) if values.ndim == 1 else
                         pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)),
                                                           values.shape[1]))
    table = pa.table(columns)
    pq.write_table(table, os.path.join(folder, PART_NAME.format(index)))
    return table.num_rows


@contextlib.contextmanager
def _client(address: str):
    """A client of the cluster at ``address``, or of a LocalCluster of N worker
    processes with 1 thread each for ``local:N`` (closed at the end)."""
    import distributed

    if address.startswith("local:"):
        try:
            n_workers = int(address[len("local:"):])
        except ValueError:
            n_workers = 0
        if n_workers < 1:
            raise files.InputError(f"--dask {address}: local:N needs a worker count N >= 1")
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                      processes=True, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(address, timeout="30s")
    except OSError as error:
        raise files.InputError(f"--dask {address}: cannot reach the scheduler ({error})") \
            from None
    with client:
        yield client


def run(args) -> dict:
    """``logitcore score`` on Dask; returns the JSON summary document."""
    from . import dask as ld

    check_options(args)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise files.InputError(f"{output}: exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise files.InputError(f"{output.parent}: no such directory")
    temperature = (None if args.temperature is None
                   else files.check_temperature(args.temperature))
    logits_source = _open(args.input, kind=args.kind, for_labels=False)
    labels_source = None
    try:
        if args.labels is not None:
            labels_source = _open(args.labels, kind=args.kind, for_labels=True)
        files._check_pairing(logits_source, labels_source, args.kind)
        logits = _as_dask_rows(args.input, logits_source, args.chunk_rows)
        labels = (None if labels_source is None else
                  _labels_array(args.labels, labels_source, logits.chunks[:1] + (
                      logits.chunks[1:] if args.kind == "multilabel" else ())))
    finally:
        for source in (logits_source, labels_source):
            if source is not None:
                source.close()
    if args.kind == "binary" and logits.ndim == 2:
        logits = logits[:, 0]
    dtype = np.dtype(np.float32) if logits.dtype.itemsize < 4 else logits.dtype
    if logits.dtype != dtype:  # half precision widened, as the in-memory CLI does
        logits = logits.astype(dtype)
    if temperature is not None:
        logits = logits / dtype.type(temperature)
    # one backend for every chunk, chosen for the whole file (as the in-memory CLI)
    backend = _config.resolve(f"score_{args.kind}", args.backend,
                              logits_source.n_rows * (math.prod(logits_source.row_shape)
                                                      or 1))[0]
    scores = ld.score(logits, labels, kind=args.kind, top_k=args.top_k,
                      threshold=args.threshold, ignore_index=args.ignore_index,
                      fields=args.fields, backend=backend)
    temp = output.with_name(f".{output.name}.{os.getpid()}.partial")
    started = time.perf_counter()
    import dask

    try:
        temp.mkdir()
        with _client(args.dask) as client:
            blocks = scores._blocks.to_delayed().ravel()
            parts = [dask.delayed(_write_part, pure=True)(block, str(temp.resolve()), i)
                     for i, block in enumerate(blocks)]
            # one graph: each block is scored once, written and summarised where it is
            summary, *_ = dask.compute(scores.summary(), *parts, scheduler=client)
        if output.exists():  # --overwrite
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(temp, output)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    seconds = time.perf_counter() - started
    document = files._json_summary(logits_source, output, args.kind, summary, seconds,
                                   int(logits.chunks[0][0]))
    document["calibration"] = (None if temperature is None else
                               {"temperature": temperature, "source": "given"})
    document["dask"] = {"scheduler": args.dask, "parts": len(parts)}
    return document
