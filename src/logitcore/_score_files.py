"""``logitcore score``: score logit files of any size in bounded memory.

Three threads pass chunks of rows along, so that reading, scoring and writing overlap:

    reader thread             main thread                         writer thread
    reads the next chunk  ->  (widens half precision), score(),  ->  appends the fields
    into a free buffer        merges the chunk's Summary             to the temporary output

At most three chunks are in flight (one being read, one waiting, one being scored), so
memory does not grow with the file: chunk rows come from a memory budget
(``chunk_rows_for``). A chunk of a plain file is a read-only map of just that chunk's
pages, unmapped when the chunk is done (``_StreamRows``); other inputs are copied into
one of three reused buffers. Files are never mapped whole: the pages of a whole-file
map walked to the end stay resident and count toward the process's RSS. NumPy, file
reads, mmap, zlib and pyarrow release the GIL, and so do the kernels, so the three
threads run at once. OpenMP's idle workers sleep rather than spin in this command
(``_idle_openmp_threads_sleep``), leaving the cores to the reader and writer.

Inputs are data, never code: ``.npy`` headers are parsed by NumPy's literal parser
(nothing is unpickled), object dtypes are refused, and every size a header states is
checked against the bytes the file holds before anything is allocated; a row larger
than the memory budget is refused too.

Calibration: a temperature T is passed to ``score(temperature=T)``, which scores each
chunk as chunk / T without a scaled copy of it; a fitted T comes from validation
files, read chunk by chunk once per pass of the fit before the pass over the input
(``fit_on_validation``), so validation files of any size fit; the binned calibration
state merges per chunk inside ``Summary``, and ``--plot`` draws the reliability
diagram from the final summary's bins,
without reading the input again.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import mmap
import os
import queue
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from . import _calibration, _config, _ops
from ._calibration import fit_temperature_by_sums, reliability, reliability_diagram
from ._score import Summary, score
from ._thresholds import _probability_below, tune_thresholds

# --- errors and optional dependencies ----------------------------------------------------


class InputError(Exception):
    """Bad input or options: the CLI prints the message as one line and exits 1."""


# The extra of pyproject.toml that installs each optional module.
_EXTRA_OF_MODULE = {"pyarrow": "parquet", "safetensors": "safetensors",
                    "ml_dtypes": "bfloat16", "tqdm": "progress", "matplotlib": "plot"}


def require(module: str, purpose: str):
    """Import an optional module, or an InputError that names the extra installing it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRA_OF_MODULE[module.split(".")[0]]
        raise InputError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                         f'pip install "logitcore[{extra}]" (or "logitcore[cli]" for every '
                         f"optional part of the command line)") from None


# --- dtypes -----------------------------------------------------------------------------

LOGIT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


def dtype_named(name: str) -> np.dtype:
    """A dtype from its name; bfloat16 comes from ml_dtypes."""
    if name == "bfloat16":
        return np.dtype(require("ml_dtypes", "bfloat16 data").bfloat16)
    try:
        return np.dtype(name)
    except TypeError:
        raise InputError(f"unknown dtype {name!r}") from None


def _is_bfloat16(dtype: np.dtype) -> bool:
    return dtype.name == "bfloat16"


def _check_logit_dtype(dtype: np.dtype, where: str) -> None:
    if _is_bfloat16(dtype) or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)):
        return
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.fields is None:
        raise InputError(f"{where}: holds 2-byte void values, which is how NumPy saves "
                         f"bfloat16; pass --dtype bfloat16")
    raise InputError(f"{where}: dtype {dtype} is not supported; logits must be "
                     f"{', '.join(LOGIT_DTYPE_NAMES)}")


def _check_label_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "iub":
        raise InputError(f"{where}: labels must be integers (or bool), got dtype {dtype}")


def _refuse_objects(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (dtype {dtype}); input files are "
                         f"data, never code, so object arrays are refused")


# --- sources: rows read in order into reused buffers ---------------------------------------


class RowSource:
    """``n_rows`` rows of shape ``row_shape`` and dtype ``dtype``, read in order.

    ``read_into(buffer, n)`` writes the next ``n`` rows into ``buffer`` (a flat uint8
    array of at least ``n * row_bytes`` bytes) and returns them as an (n, *row_shape)
    view of it."""

    name: str
    n_rows: int
    row_shape: tuple
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize

    def _rows_view(self, buffer: np.ndarray, n: int) -> np.ndarray:
        return buffer[:n * self.row_bytes].view(self.dtype).reshape((n,) + self.row_shape)

    def read_into(self, buffer: np.ndarray, n: int) -> np.ndarray:
        raise NotImplementedError

    def rewind(self) -> None:
        """Back to the first row (a streamed temperature fit reads its rows once per
        pass)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# Chunks of plain files are memory-mapped where mmap takes flags (POSIX).
_MAP_CHUNKS = hasattr(mmap, "MAP_SHARED")


class _StreamRows(RowSource):
    """Rows stored contiguously in a binary stream (a file at an offset, a zip member).

    A chunk of a plain file is mapped read-only rather than copied into the buffer
    (``_mapped``): the kernels then read the page cache directly, which saved a third of
    the CPU time of scoring a page-cached file. Each map covers one chunk and is
    unmapped when the last array viewing it is dropped, so mapped pages do not pile up
    in the process's RSS as they would in a whole-file map. A zip member (which may be
    deflated) is read into the buffer."""

    def __init__(self, name, stream, dtype, n_rows, row_shape):
        self.name, self._stream = name, stream
        self.dtype, self.n_rows, self.row_shape = dtype, n_rows, tuple(row_shape)
        self._rows_read = 0
        self._data_start = stream.tell()
        self._fd = None
        if _MAP_CHUNKS:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                self._fd = stream.fileno()  # a zip member has none

    def read_into(self, buffer, n):
        wanted = n * self.row_bytes
        if self._fd is not None and wanted:
            return self._mapped(n)
        view = memoryview(buffer)[:wanted]
        got = 0
        while got < wanted:
            count = self._stream.readinto(view[got:])
            if not count:
                raise InputError(
                    f"{self.name}: the file ends inside row {self._rows_read + got // self.row_bytes}"
                    f" of the {self.n_rows} its header states (truncated?)")
            got += count
        self._rows_read += n
        return self._rows_view(buffer, n)

    def _mapped(self, n):
        """The next ``n`` rows as a read-only view of a map of just their pages
        (MAP_POPULATE: mapped in one system call, not a page fault per page)."""
        start = self._data_start + self._rows_read * self.row_bytes
        end = start + n * self.row_bytes
        # A file cut short after it was opened would raise SIGBUS on reading the map:
        # check its size first (the header's size was checked against it on opening).
        if os.fstat(self._fd).st_size < end:
            raise InputError(f"{self.name}: the file ends before row {self._rows_read + n} "
                             f"of the {self.n_rows} its header states (truncated while "
                             f"being read?)")
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        pages = mmap.mmap(self._fd, end - aligned, prot=mmap.PROT_READ,
                          flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                          offset=aligned)
        rows = np.frombuffer(pages, self.dtype, count=n * math.prod(self.row_shape),
                             offset=start - aligned)
        self._rows_read += n
        return rows.reshape((n,) + self.row_shape)

    def rewind(self):
        self._stream.seek(self._data_start)  # a deflated zip member decompresses again
        self._rows_read = 0

    def close(self):
        self._stream.close()


class _BatchedRows(RowSource):
    """Rows that arrive in batches of any length (Parquet record batches, generated
    blocks), copied across batch boundaries into the caller's buffer. Subclasses give
    ``_batches()``, a generator of (m, *row_shape) arrays."""

    _batch_iter = None
    _pending = None
    _pending_at = 0
    _rows_read = 0

    def read_into(self, buffer, n):
        if self._batch_iter is None:
            self._batch_iter = self._batches()
        rows = self._rows_view(buffer, n)
        filled = 0
        while filled < n:
            if self._pending is None or self._pending_at == len(self._pending):
                self._pending, self._pending_at = next(self._batch_iter, None), 0
                if self._pending is None:
                    raise InputError(f"{self.name}: ends after {self._rows_read + filled} "
                                     f"rows; {self.n_rows} were expected")
            take = min(n - filled, len(self._pending) - self._pending_at)
            rows[filled:filled + take] = self._pending[self._pending_at:self._pending_at + take]
            filled += take
            self._pending_at += take
        self._rows_read += n
        return rows

    def rewind(self):
        self._batch_iter, self._pending, self._pending_at, self._rows_read = None, None, 0, 0

    def _batches(self):
        raise NotImplementedError


class ArrayRows(RowSource):
    """Rows of an array in memory (the demo's labels)."""

    def __init__(self, name, array):
        self.name, self._array = name, array
        self.dtype, self.n_rows, self.row_shape = array.dtype, len(array), array.shape[1:]
        self._at = 0

    def read_into(self, buffer, n):
        rows = self._rows_view(buffer, n)
        rows[...] = self._array[self._at:self._at + n]
        self._at += n
        return rows

    def rewind(self):
        self._at = 0


class _TextLabels(RowSource):
    """One integer label per line of a text file."""

    def __init__(self, path: Path):
        self.name, self.dtype, self.row_shape = str(path), np.dtype(np.int64), ()
        self.n_rows = _count_lines(path)
        self._file = open(path, "rb")
        self._line = 0

    def read_into(self, buffer, n):
        rows = self._rows_view(buffer, n)
        for i in range(n):
            line = self._file.readline()
            self._line += 1
            try:
                rows[i] = int(line)
            except (ValueError, OverflowError):
                text = line.decode(errors="replace").strip()[:40]
                raise InputError(f"{self.name} line {self._line}: {text!r} is not an "
                                 f"integer label") from None
        return rows

    def rewind(self):
        self._file.seek(0)
        self._line = 0

    def close(self):
        self._file.close()


def _count_lines(path: Path) -> int:
    """Lines of a text file (a last line without a newline counts), read in blocks."""
    count, last = 0, b"\n"
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# --- opening inputs -------------------------------------------------------------------------

def _split_member(spec: str) -> tuple[Path, str | None]:
    """``file.npz:name`` -> (file, name); a path that exists is taken whole."""
    path = Path(spec)
    if path.exists() or ":" not in spec:
        return path, None
    file, member = spec.rsplit(":", 1)
    return Path(file), member


def _file_size(path: Path) -> int:
    try:
        if not path.is_file():
            raise InputError(f"{path}: no such file" if not path.exists()
                             else f"{path}: not a regular file")
        return path.stat().st_size
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None


class Layout:
    """How an array's axes make rows. Logits: the last axis holds a row's classes and
    the leading axes are rows (flattened in C order), except that 1-D binary logits are
    one per row. Labels: every axis is rows, except for multilabel, whose last axis
    holds a row's 0 / 1 labels."""

    def __init__(self, kind: str, for_labels: bool):
        self.kind, self.for_labels = kind, for_labels

    def split(self, shape: tuple, where: str) -> tuple[int, tuple]:
        """(rows, row shape) of an array of ``shape``."""
        shape = tuple(shape)
        if self.for_labels and self.kind != "multilabel":
            if not shape:
                raise InputError(f"{where}: is a single value; labels need one per row")
            return math.prod(shape), ()
        if self.kind == "binary" and not self.for_labels and len(shape) == 1:
            return shape[0], ()
        if len(shape) < 2:
            what = "labels" if self.for_labels else "logits"
            raise InputError(f"{where}: {what} of shape {shape}: kind {self.kind} needs "
                             f"rows x classes (or more leading axes)"
                             + (" -- one logit per row is --kind binary"
                                if len(shape) == 1 and not self.for_labels else ""))
        return math.prod(shape[:-1]), shape[-1:]


def _read_npy_header(stream, where: str):
    """(dtype, shape) of a .npy stream, positioned at its data; NumPy's header parser
    reads Python literals only, never pickles."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not "
                             f"supported")
    except (ValueError, SyntaxError, EOFError, OverflowError, TypeError) as error:
        raise InputError(f"{where}: not a valid .npy file ({str(error).splitlines()[0]})") \
            from None
    _refuse_objects(dtype, where)
    if fortran_order and len(shape) > 1:
        raise InputError(f"{where}: is stored in Fortran order, so its rows are not "
                         f"contiguous; save it with np.save(path, np.ascontiguousarray(x))")
    return dtype, tuple(shape)


def _npy_source(where, stream, data_available, layout, dtype_override):
    dtype, shape = _read_npy_header(stream, where)
    if dtype_override is not None:
        if dtype_override.itemsize != dtype.itemsize or dtype.kind not in "Vf":
            raise InputError(f"{where}: --dtype {dtype_override} does not match the "
                             f"file's dtype {dtype}")
        dtype = dtype_override
    needed = math.prod(shape) * dtype.itemsize
    available = data_available - stream.tell()
    if needed > available:
        raise InputError(f"{where}: truncated: its header states shape {shape} of "
                         f"{dtype} ({needed} bytes of data) but the file holds "
                         f"{max(available, 0)} bytes after the header")
    n_rows, row_shape = layout.split(shape, where)
    return _StreamRows(where, stream, dtype, n_rows, row_shape)


def _open_npy(path: Path, layout: Layout, dtype_override):
    size = _file_size(path)
    stream = open(path, "rb")
    try:
        return _npy_source(str(path), stream, size, layout, dtype_override)
    except BaseException:
        stream.close()
        raise


def _open_npz(path: Path, member: str | None, layout: Layout, dtype_override):
    _file_size(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path}: not a valid .npz file ({error})") from None
    names = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
    if member is None:
        if len(names) != 1:
            archive.close()
            raise InputError(f"{path}: holds {len(names)} arrays ({', '.join(names)}); "
                             f"name one as {path}:NAME")
        member = names[0]
    if member not in names:
        archive.close()
        raise InputError(f"{path}: has no array {member!r}; it holds {', '.join(names)}")
    info = archive.getinfo(member + ".npy")
    # The member is decompressed as it is read (stored or deflated alike); the size the
    # zip directory states bounds what the header may claim, and a short member is
    # caught when the stream ends early.
    stream = archive.open(info)
    stream.close = _closing_both(stream, archive)
    try:
        return _npy_source(f"{path}:{member}", stream, info.file_size, layout,
                           dtype_override)
    except BaseException:
        stream.close()
        raise


def _closing_both(stream, archive):
    close_stream = stream.close

    def close():
        close_stream()
        archive.close()
    return close


_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32",
                       "F64": "float64", "I64": "int64", "I32": "int32", "I16": "int16",
                       "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _open_safetensors(path: Path, tensor: str | None, layout: Layout):
    _file_size(path)
    safetensors = require("safetensors", "reading .safetensors files")
    try:
        # The safetensors package checks the header against the file (offsets, sizes,
        # dtypes). Its get_slice maps the whole file, and the pages it touches stay
        # resident while the file is open, so the rows are then read chunk by chunk.
        with safetensors.safe_open(str(path), framework="numpy") as handle:
            names = list(handle.keys())
    except Exception as error:  # SafetensorError and OSError: a file that is not one
        raise InputError(f"{path}: not a valid .safetensors file ({error})") from None
    if tensor is None:
        if len(names) != 1:
            raise InputError(f"{path}: holds {len(names)} tensors ({', '.join(names)}); "
                             f"name one as {path}:NAME")
        tensor = names[0]
    if tensor not in names:
        raise InputError(f"{path}: has no tensor {tensor!r}; it holds {', '.join(names)}")
    stream = open(path, "rb")
    try:
        (header_length,) = struct.unpack("<Q", stream.read(8))
        entry = json.loads(stream.read(header_length))[tensor]
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise InputError(f"{path}:{tensor}: dtype {entry['dtype']} is not supported")
        dtype = dtype_named(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        shape = tuple(entry["shape"])
        stream.seek(8 + header_length + entry["data_offsets"][0])
        n_rows, row_shape = layout.split(shape, f"{path}:{tensor}")
        return _StreamRows(f"{path}:{tensor}", stream, dtype, n_rows, row_shape)
    except BaseException:
        stream.close()
        raise


def _open_raw(path: Path, dtype: np.dtype, shape: tuple, layout: Layout):
    size = _file_size(path)
    if shape.count(-1) > 1:
        raise InputError("--shape may leave only one dimension as -1")
    known = math.prod(d for d in shape if d != -1) * dtype.itemsize
    if -1 in shape:
        if known == 0 or size % known:
            raise InputError(f"{path}: {size} bytes are not a whole number of rows of "
                             f"{known} bytes (--shape {shape}, --dtype {dtype})")
        shape = tuple(size // known if d == -1 else d for d in shape)
    elif known != size:
        raise InputError(f"{path}: holds {size} bytes, but --shape {shape} of {dtype} "
                         f"needs {known}")
    n_rows, row_shape = layout.split(shape, f"{path} (--shape)")
    return _StreamRows(str(path), open(path, "rb"), dtype, n_rows, row_shape)


class _ParquetRows(_BatchedRows):
    """A Parquet column read by record batches: a fixed-size list per row (a row of
    logits, a multilabel row) or one value per row (binary logits, class labels)."""

    BATCH_BYTES = 8 << 20

    def __init__(self, path: Path, column: str | None, layout: Layout):
        require("pyarrow", "Parquet files")
        import pyarrow as pa
        import pyarrow.parquet as pq

        _file_size(path)
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{path}: not a valid Parquet file ({error})") from None
        schema = self._file.schema_arrow
        lists = layout.kind != "binary" and (layout.kind == "multilabel"
                                             or not layout.for_labels)
        if column is None:
            fitting = [f.name for f in schema if pa.types.is_fixed_size_list(f.type) == lists]
            if len(fitting) != 1:
                what = "fixed-size-list" if lists else "non-list"
                raise InputError(f"{path}: has {len(fitting)} {what} columns "
                                 f"({', '.join(fitting) or 'none'}); name one as "
                                 f"{path}:COLUMN")
            column = fitting[0]
        if column not in schema.names:
            raise InputError(f"{path}: has no column {column!r}; its columns are "
                             f"{', '.join(schema.names)}")
        field_type = schema.field(column).type
        self.name, self._column = f"{path}:{column}", column
        if pa.types.is_fixed_size_list(field_type):
            value_type, shape = field_type.value_type, (-1, field_type.list_size)
        elif pa.types.is_list(field_type) or pa.types.is_large_list(field_type):
            raise InputError(f"{self.name}: is a list column of varying length ({field_type});"
                             f" rows of logits must be a fixed-size list")
        else:
            value_type, shape = field_type, (-1,)
        try:
            self.dtype = np.dtype(value_type.to_pandas_dtype())
        except (NotImplementedError, TypeError):
            raise InputError(f"{self.name}: values of type {value_type} are not "
                             f"supported") from None
        self.n_rows = self._file.metadata.num_rows
        _, self.row_shape = layout.split(shape, self.name)

    def _batches(self):
        # Record batches of about BATCH_BYTES: pyarrow decodes a row group's pages as
        # the batches are asked for, so a large row group is not held whole.
        batch_rows = max(1, min(65536, self.BATCH_BYTES // max(self.row_bytes, 1)))
        for batch in self._file.iter_batches(batch_size=batch_rows, columns=[self._column]):
            values = batch.column(0)
            if values.null_count:
                raise InputError(f"{self.name}: has null rows; fill them (with NaN rows "
                                 f"or a label) first")
            if self.row_shape:
                values = values.flatten()  # the values of each row, rows in order
            flat = values.to_numpy(zero_copy_only=False)
            yield flat.reshape((len(batch),) + self.row_shape)

    def close(self):
        self._file.close()


def open_rows(spec: str, *, kind: str, for_labels: bool, dtype: np.dtype | None = None,
              shape: tuple | None = None) -> RowSource:
    """The rows of an input file: ``.npy``, ``file.npz[:name]``, ``file.safetensors[:name]``,
    ``file.parquet[:column]``, raw binary with ``dtype`` and ``shape``, or (labels only) a
    text file with one integer per line. Rows as ``Layout(kind, for_labels)`` says."""
    layout = Layout(kind, for_labels)
    path, member = _split_member(spec)
    suffix = path.suffix.lower()
    if shape is not None and suffix in (".npy", ".npz", ".safetensors", ".parquet", ".pq"):
        raise InputError(f"{spec}: --shape is for raw binary input; a {suffix} file states "
                         f"its own shape")
    if member is not None and suffix not in (".npz", ".safetensors", ".parquet", ".pq"):
        if not path.exists():
            raise InputError(f"{spec}: no such file")
        raise InputError(f"{spec}: only .npz, .safetensors and Parquet files hold named "
                         f"arrays")
    if suffix == ".npy":
        source = _open_npy(path, layout, dtype)
    elif suffix == ".npz":
        source = _open_npz(path, member, layout, dtype)
    elif suffix == ".safetensors":
        source = _open_safetensors(path, member, layout)
    elif suffix in (".parquet", ".pq"):
        source = _ParquetRows(path, member, layout)
    elif for_labels and shape is None:
        if kind == "multilabel":
            raise InputError(f"{spec}: multilabel labels need an array file (.npy, .npz, "
                             f".safetensors, Parquet), a 0 / 1 row per logits row")
        _file_size(path)
        source = _TextLabels(path)
    else:
        if dtype is None or shape is None:
            raise InputError(f"{spec}: not a .npy, .npz, .safetensors or Parquet file; raw "
                             f"binary input needs --dtype and --shape")
        source = _open_raw(path, dtype, shape, layout)
    try:
        (_check_label_dtype if for_labels else _check_logit_dtype)(source.dtype, source.name)
    except InputError:
        source.close()
        raise
    return source


# --- the demo's data --------------------------------------------------------------------------

DEMO_CLASSES = 100
DEMO_SIGNAL = 3.0       # the true class's mean evidence, in noise standard deviations
DEMO_OVERCONFIDENCE = 2.5
_DEMO_BLOCK_ROWS = 16384


def demo_labels(n_rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).integers(0, DEMO_CLASSES, n_rows)


class DemoRows(_BatchedRows):
    """The logits of an over-confident classifier, made block by block on the fly.

    Evidence for each class is standard normal noise, plus ``DEMO_SIGNAL`` for the true
    class; the Bayes-calibrated logits are ``DEMO_SIGNAL * evidence`` (the likelihood
    ratio of the two normals), and the model reports them ``DEMO_OVERCONFIDENCE`` times
    too large, as modern deep networks often are (Guo et al. 2017): about 68% accurate, mean
    confidence about 0.89, and a temperature of 2.5 is the exact fix. Each block of
    rows has its own seed, so the data do not depend on the chunk size."""

    def __init__(self, labels: np.ndarray, seed: int):
        self.name, self.dtype = "demo logits", np.dtype(np.float32)
        self.n_rows, self.row_shape = len(labels), (DEMO_CLASSES,)
        self._labels, self._seed = labels, seed

    def _batches(self):
        for block, start in enumerate(range(0, self.n_rows, _DEMO_BLOCK_ROWS)):
            labels = self._labels[start:start + _DEMO_BLOCK_ROWS]
            rng = np.random.default_rng([self._seed, 1, block])
            evidence = rng.standard_normal((len(labels), DEMO_CLASSES), dtype=np.float32)
            evidence[np.arange(len(labels)), labels] += DEMO_SIGNAL
            evidence *= np.float32(DEMO_SIGNAL * DEMO_OVERCONFIDENCE)
            yield evidence


# --- sinks: outputs written to a temporary file, renamed when complete -------------------------

OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".npz": "npz", ".csv": "csv"}


class _Sink:
    """Writes the fields of each chunk to ``<dir>/.<name>.<pid>.partial``; ``commit``
    renames it to the output, ``abort`` removes it."""

    def __init__(self, path: Path, n_rows: int):
        self.path, self.n_rows = path, n_rows
        self.temp_path = path.with_name(f".{path.name}.{os.getpid()}.partial")

    def write(self, fields: dict) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Complete the temporary file."""

    def commit(self) -> None:
        self.finish()
        os.replace(self.temp_path, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.temp_path.unlink()


class _ParquetSink(_Sink):
    """One Parquet row per input row; 2-D fields (top-k) as fixed-size-list columns.
    Small chunks are gathered into row groups of up to ``ROW_GROUP_ROWS`` rows or
    ``ROW_GROUP_BYTES`` bytes, the sizes Parquet readers work well with."""

    ROW_GROUP_ROWS = 65536
    ROW_GROUP_BYTES = 16 << 20

    def __init__(self, path, n_rows):
        super().__init__(path, n_rows)
        require("pyarrow", "Parquet output")
        import pyarrow as pa
        import pyarrow.parquet as pq
        self._pa, self._pq = pa, pq
        self._writer = None
        self._tables, self._rows, self._bytes = [], 0, 0

    def _column(self, values):
        pa = self._pa
        if values.ndim == 1:
            return pa.array(values)
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)),
                                                 values.shape[1])

    def write(self, fields):
        table = self._pa.table({name: self._column(values) for name, values in fields.items()})
        if self._writer is None:
            # Dictionary encoding only for the integer columns (classes, ranks): float
            # fields have nearly as many distinct values as rows, so hashing them cost
            # more CPU than scoring them, and the writer then drops the dictionary
            # anyway. A fixed-size-list column is named by the path of its values.
            dictionary = [name if values.ndim == 1 else f"{name}.list.element"
                          for name, values in fields.items() if values.dtype.kind in "iu"]
            self._writer = self._pq.ParquetWriter(self.temp_path, table.schema,
                                                  use_dictionary=dictionary)
        self._tables.append(table)
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= self.ROW_GROUP_ROWS or self._bytes >= self.ROW_GROUP_BYTES:
            self._flush()

    def _flush(self):
        if self._tables:
            self._writer.write_table(self._pa.concat_tables(self._tables),
                                     row_group_size=max(self._rows, 1))
        self._tables, self._rows, self._bytes = [], 0, 0

    def finish(self):
        self._flush()
        self._writer.close()

    def abort(self):
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        super().abort()


class _NpzSink(_Sink):
    """One array per field, as ``np.savez`` writes (stored members). Each field is
    appended to its own .npy in a temporary folder; ``finish`` stores them in the zip."""

    def __init__(self, path, n_rows):
        super().__init__(path, n_rows)
        self._folder = None
        self._files = {}

    def write(self, fields):
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.",
                                                 dir=self.path.parent))
        for name, values in fields.items():
            file = self._files.get(name)
            if file is None:
                file = self._files[name] = open(self._folder / f"{name}.npy", "wb")
                np.lib.format.write_array_header_1_0(file, {
                    "descr": np.lib.format.dtype_to_descr(values.dtype),
                    "fortran_order": False, "shape": (self.n_rows,) + values.shape[1:]})
            file.write(np.ascontiguousarray(values).data)

    def finish(self):
        with zipfile.ZipFile(self.temp_path, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
            for name, file in self._files.items():
                file.close()
                out.write(self._folder / f"{name}.npy", arcname=f"{name}.npy")
        shutil.rmtree(self._folder, ignore_errors=True)

    def abort(self):
        for file in self._files.values():
            file.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        super().abort()


class _CsvSink(_Sink):
    """A header line, then one line per row; 2-D fields give a column per index
    (``top_k_indices_0``, ...). Floats round-trip (9 significant digits for float32,
    17 for float64); flags are true / false."""

    def __init__(self, path, n_rows):
        super().__init__(path, n_rows)
        self._file = None
        self._line_format = None

    def write(self, fields):
        if self._file is None:
            self._file = open(self.temp_path, "w", newline="")
        columns, names, formats = [], [], []
        for name, values in fields.items():
            per_index = [values] if values.ndim == 1 else list(values.T)
            for j, column in enumerate(per_index):
                names.append(name if values.ndim == 1 else f"{name}_{j}")
                if column.dtype == np.bool_:
                    columns.append(np.where(column, "true", "false").tolist())
                    formats.append("%s")
                else:
                    columns.append(column.tolist())
                    formats.append({"f": "%.17g" if column.dtype.itemsize == 8 else "%.9g",
                                    "i": "%d", "u": "%d"}[column.dtype.kind])
        if self._line_format is None:
            self._file.write(",".join(names) + "\n")
            self._line_format = ",".join(formats) + "\n"
        line = self._line_format
        self._file.writelines(line % row for row in zip(*columns))

    def finish(self):
        self._file.close()

    def abort(self):
        if self._file is not None:
            self._file.close()
        super().abort()


def open_sink(path: Path, n_rows: int, overwrite: bool) -> _Sink:
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: the output format comes from the extension: "
                         f"{', '.join(OUTPUT_FORMATS)}")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory")
    return {"parquet": _ParquetSink, "npz": _NpzSink, "csv": _CsvSink}[fmt](path, n_rows)


# --- scoring chunks --------------------------------------------------------------------------

# Bytes of temporaries per logit that one score() call holds on the float64 reference
# backend (x64, log-probabilities, probabilities, the sort order, ...: measured with
# tracemalloc at ~61). The compiled scoring kernels hold none.
_REFERENCE_SCRATCH_PER_ELEMENT = 64
_OUTPUT_BYTES_PER_FIELD = 8
DEFAULT_MEMORY_MB = 128


def chunk_rows_for(memory_bytes: int, logits: RowSource, labels: RowSource | None,
                   n_fields: int, top_k: int, backend) -> int:
    """Rows per chunk so that the pipeline's buffers and one score() call's temporaries
    fit ``memory_bytes``: three raw input buffers, the widened copy, the scratch of the
    backend, and three chunks of output fields (being made, queued, being written)."""
    n_classes = math.prod(logits.row_shape)
    per_row = 3 * logits.row_bytes + 4 * n_classes
    if labels is not None:
        per_row += 3 * labels.row_bytes + 8 * math.prod(labels.row_shape)
    kernel = "score_multiclass" if logits.row_shape else "score_binary"
    if _config.resolve(kernel, backend, None)[0] == "numpy":
        per_row += _REFERENCE_SCRATCH_PER_ELEMENT * n_classes
    per_row += 3 * _OUTPUT_BYTES_PER_FIELD * (n_fields + 2 * top_k)
    rows = memory_bytes // per_row
    if rows < 1:
        raise InputError(f"one row needs about {per_row / 2**20:.1f} MB, more than the "
                         f"memory budget of {memory_bytes / 2**20:.0f} MB: raise --memory")
    return int(max(1, min(rows, logits.n_rows)))


class _ChunkScorer:
    """score() on one chunk, with the options of the run; half precision is widened
    first into a reused buffer."""

    def __init__(self, kind, top_k, threshold, ignore_index, fields, backend, chunk_rows,
                 row_shape, labels_name, n_classes, temperature=None):
        self.options = dict(kind=kind, top_k=top_k, threshold=threshold,
                            ignore_index=ignore_index, fields=fields, backend=backend,
                            temperature=temperature)
        self._wide = {}  # dtype -> reused buffer of chunk_rows rows
        self._chunk_rows, self._row_shape = chunk_rows, row_shape
        self._labels_name, self._n_classes = labels_name, n_classes

    def widened(self, rows: np.ndarray) -> np.ndarray:
        """Rows the kernels read as they are: native float32 / float64. Until the kernels
        read half precision natively (issue 13: float16 and bfloat16 in the scoring
        pass), float16 and bfloat16 chunks are widened to float32 here, and byte-swapped
        data made native, in a buffer reused for every chunk."""
        dtype = rows.dtype
        if dtype.isnative and dtype in (np.float32, np.float64) and not _is_bfloat16(dtype):
            return rows
        wide = self._reused(np.dtype(np.float64 if dtype.itemsize == 8 else np.float32),
                            len(rows))
        np.copyto(wide, rows, casting="unsafe")
        return wide

    def _reused(self, dtype: np.dtype, n: int) -> np.ndarray:
        """``n`` rows of a buffer of ``dtype`` made once for the run."""
        buffer = self._wide.get(dtype)
        if buffer is None:
            buffer = self._wide[dtype] = np.empty((self._chunk_rows,) + self._row_shape,
                                                  dtype)
        return buffer[:n]

    def __call__(self, logits, labels, first_row):
        try:
            return score(logits, labels, **self.options)
        except IndexError:
            raise self._label_error(labels, first_row) from None
        except (ValueError, TypeError) as error:
            raise InputError(f"rows {first_row}..{first_row + len(logits) - 1}: {error}") \
                from None

    def _label_error(self, labels, first_row):
        kind, ignore_index = self.options["kind"], self.options["ignore_index"]
        n_classes = 2 if kind == "binary" else self._n_classes
        bad = ~(((labels >= 0) & (labels < n_classes)) | (labels == ignore_index))
        row = int(np.argmax(bad))
        return InputError(f"{self._labels_name}: row {first_row + row} has label "
                          f"{labels[row]}, which is not a class index in [0, {n_classes}) "
                          f"and not --ignore-index ({ignore_index})")


# --- the pipeline ----------------------------------------------------------------------------

_END = object()
_POLL_SECONDS = 0.1


class _Stopped(Exception):
    """Raised in a pipeline thread when another one failed or the run was interrupted."""


class _Pipeline:
    """Reader thread -> main thread (scoring) -> writer thread, joined by bounded queues,
    with three reused input buffers. The first error of any thread stops all three and
    is raised in the main thread."""

    N_BUFFERS = 3

    def __init__(self, logits: RowSource, labels: RowSource | None, sink: _Sink,
                 chunk_rows: int):
        self.logits, self.labels, self.sink, self.chunk_rows = logits, labels, sink, chunk_rows
        self._stop = threading.Event()
        self._error = None
        self._free = queue.Queue()
        for _ in range(self.N_BUFFERS):
            self._free.put((np.empty(chunk_rows * logits.row_bytes, np.uint8),
                            None if labels is None
                            else np.empty(chunk_rows * labels.row_bytes, np.uint8)))
        self._read = queue.Queue(maxsize=1)
        self._scored = queue.Queue(maxsize=1)
        self._threads = [threading.Thread(target=self._guarded, args=(work,), daemon=True,
                                          name=f"logitcore-score-{work.__name__}")
                         for work in (self._reader, self._writer)]

    # queue operations that give up when the run stops
    def _get(self, q):
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                pass

    def _put(self, q, item):
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return q.put(item, timeout=_POLL_SECONDS)
            except queue.Full:
                pass

    def _guarded(self, work):
        try:
            work()
        except _Stopped:
            pass
        except BaseException as error:  # handed to the main thread
            if self._error is None:
                self._error = error
            self._stop.set()

    def _reader(self):
        n_rows = self.logits.n_rows
        # A file of no rows still gives one empty chunk, so the output gets its columns.
        for start in range(0, max(n_rows, 1), self.chunk_rows):
            count = min(self.chunk_rows, n_rows - start)
            buffers = self._get(self._free)
            logits = self.logits.read_into(buffers[0], count)
            labels = None if self.labels is None else self.labels.read_into(buffers[1], count)
            self._put(self._read, (start, logits, labels, buffers))
        self._put(self._read, _END)

    def _writer(self):
        while (item := self._get(self._scored)) is not _END:
            self.sink.write(item)

    def chunks(self):
        """Yields (first row, logits, labels) and takes back each chunk's buffers when
        the next is asked for; ``deliver(fields)`` hands the scored fields to the writer."""
        for thread in self._threads:
            thread.start()
        while True:
            item = self._get_checked(self._read)
            if item is _END:
                return
            start, logits, labels, buffers = item
            yield start, logits, labels
            self._free.put(buffers)

    def deliver(self, fields: dict):
        self._put_checked(self._scored, fields)

    def finish(self):
        """Waits for the writer to write everything."""
        self._put_checked(self._scored, _END)
        while self._threads[1].is_alive():
            self._threads[1].join(_POLL_SECONDS)
            self._raise_failure()
        self._raise_failure()

    def _raise_failure(self):
        if self._error is not None:
            raise self._error

    def _get_checked(self, q):
        try:
            return self._get(q)
        except _Stopped:
            self._raise_failure()
            raise

    def _put_checked(self, q, item):
        try:
            self._put(q, item)
        except _Stopped:
            self._raise_failure()
            raise

    def stop(self):
        """Stops the threads (after their current read or write) and waits for them."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)


# --- progress --------------------------------------------------------------------------------

class _Progress:
    """A tqdm bar on stderr: rows, rows/s, GB/s of logits read, ETA."""

    def __init__(self, total_rows: int, row_bytes: int, enabled: bool):
        self._bar, self._row_bytes = None, row_bytes
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            print('logitcore score: no progress bar without tqdm: pip install '
                  '"logitcore[progress]"', file=sys.stderr)
            return
        self._start = time.perf_counter()
        self._rows = 0
        self._bar = tqdm(total=total_rows, unit=" rows", unit_scale=True, file=sys.stderr,
                         dynamic_ncols=True, smoothing=0.1)

    def update(self, rows: int):
        if self._bar is None:
            return
        self._rows += rows
        seconds = time.perf_counter() - self._start
        if seconds > 0:
            self._bar.set_postfix_str(f"{self._rows * self._row_bytes / seconds / 1e9:.2f} GB/s",
                                      refresh=False)
        self._bar.update(rows)

    def close(self):
        if self._bar is not None:
            self._bar.close()


# --- the run ---------------------------------------------------------------------------------

class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


@contextlib.contextmanager
def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM ignored while the run cleans up (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_temperature(value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise InputError(f"--temperature must be a finite number > 0, got {value}")
    return value


PLOT_FORMATS = (".png", ".svg", ".pdf")


def check_plot_path(path: Path, kind: str, has_labels: bool, overwrite: bool) -> None:
    """--plot's checks, made before any work starts."""
    if path.suffix.lower() not in PLOT_FORMATS:
        raise InputError(f"{path}: --plot writes {', '.join(PLOT_FORMATS)} (from the "
                         f"extension)")
    require("matplotlib", "--plot")
    if kind == "multilabel" or not has_labels:
        raise InputError("--plot draws the reliability diagram of the scored rows: it needs "
                         "--labels and --kind multiclass or binary")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory")


class _ValidationPasses:
    """The validation rows read chunk by chunk from the first row, once per pass of the
    temperature fit, in one reused buffer per source, so a validation file of any size
    is fitted within the memory budget. Chunks come as the fit's kernels read them:
    half precision widened to float32, labels as int64."""

    def __init__(self, logits: RowSource, labels: RowSource, kind, ignore_index, backend,
                 memory_bytes):
        self.logits, self.labels, self.kind = logits, labels, kind
        self.ignore_index = ignore_index
        self.chunk_rows = chunk_rows_for(memory_bytes, logits, labels, 3, 0, backend)
        # One backend for every chunk, as fit_temperature on all the rows would choose:
        # chunks on another backend would round differently.
        n_elements = logits.n_rows * (math.prod(logits.row_shape) or 1)
        kernel = "temperature_nll" if kind == "multiclass" else "score_binary"
        self.backend = _config.resolve(kernel, backend, n_elements)[0]
        self._buffers = (np.empty(max(self.chunk_rows * logits.row_bytes, 1), np.uint8),
                         np.empty(max(self.chunk_rows * labels.row_bytes, 1), np.uint8))

    def chunks(self):
        """(first row, logits, labels) of every chunk, from the first row."""
        self.logits.rewind()
        self.labels.rewind()
        for start in range(0, self.logits.n_rows, self.chunk_rows):
            count = min(self.chunk_rows, self.logits.n_rows - start)
            x = self.logits.read_into(self._buffers[0], count)
            y = self.labels.read_into(self._buffers[1], count)
            if not (x.dtype.isnative and x.dtype in (np.float32, np.float64)
                    and not _is_bfloat16(x.dtype)):
                x = x.astype(np.float64 if x.dtype.itemsize == 8 else np.float32)
            if self.kind == "binary":
                x = x.reshape(count)
            yield start, x, y.astype(np.int64, copy=False)

    def _failed(self, start, x, error) -> InputError:
        return InputError(f"{self.logits.name}: fitting the temperature, rows {start}.."
                          f"{start + len(x) - 1}: {error}")

    def sums(self, b: float) -> np.ndarray:
        """One pass: the fit's sums (weight, NLL, NLL', NLL'', limit slope and NLL''' when
        the kernel gives it) at inverse temperature b, added up over the chunks."""
        total = 0.0
        for start, x, y in self.chunks():
            try:
                total = total + np.asarray(
                    self._multiclass_sums(x, y, b) if self.kind == "multiclass"
                    else self._binary_sums(x, y, b), dtype=np.float64)
            except (ValueError, TypeError, IndexError) as error:
                raise self._failed(start, x, error) from None
        return total

    def _multiclass_sums(self, x, y, b):
        flat_labels, _ = _ops._labels_in_range(y, "labels", "fit_temperature",
                                               self.ignore_index,
                                               _ops._ones(x.shape[1], x.dtype), self.backend)
        no_weights = np.empty(0, x.dtype)
        sums = _ops._run("temperature_nll", "fit_temperature", self.backend, x, flat_labels,
                         no_weights, self.ignore_index, b)
        if not all(math.isfinite(s) for s in sums):
            _calibration._raise_bad_row(x, flat_labels, no_weights, self.ignore_index,
                                        (len(x),))
        return sums

    def _binary_sums(self, x, y, b):
        flat, signs, kept = _calibration._sigmoid_targets(x, y, -1, "binary",
                                                          self.ignore_index)
        z = signs[kept] * flat[kept].astype(np.float64)
        if not np.all(np.isfinite(z)):
            raise ValueError("a kept logit is NaN or infinite")
        return _calibration._sigmoid_sums(z, np.ones(z.size), b)

    def calibration_errors(self, temperature: float) -> tuple[float, float]:
        """Top-label ECE at T = 1 and at ``temperature``, from bins merged over the
        chunks (one more pass)."""
        before = after = None
        for start, x, y in self.chunks():
            try:
                part_before = reliability(x, y, ignore_index=self.ignore_index,
                                          backend=self.backend)
                part_after = reliability(x, y, ignore_index=self.ignore_index,
                                         temperature=temperature, backend=self.backend)
            except (ValueError, TypeError, IndexError) as error:
                raise self._failed(start, x, error) from None
            before = part_before if before is None else before.merge(part_before)
            after = part_after if after is None else after.merge(part_after)
        return before.error(), after.error()


def fit_on_validation(logits: RowSource, labels: RowSource, *, kind, ignore_index, backend,
                      memory_bytes) -> dict:
    """``fit_temperature`` on validation rows, streamed: each pass of the fit reads the
    rows chunk by chunk within the memory budget and adds up the chunks' sums
    (``fit_temperature_by_sums``). Returns the JSON document of the fit; for multiclass
    also the validation ECE at T = 1 and at the fitted T (one more pass). Closes the
    sources. A fit that gives no usable T (separable: T = 0, uninformative: T = inf) is
    an InputError."""
    try:
        _check_pairing(logits, labels, kind)
        if kind == "multilabel":
            raise InputError("--fit-temperature takes --kind multiclass or binary")
        passes = _ValidationPasses(logits, labels, kind, ignore_index, backend, memory_bytes)
        try:
            fit = fit_temperature_by_sums(passes.sums, kind)
        except ValueError as error:  # no kept rows
            raise InputError(f"{logits.name}: fitting the temperature: {error}") from None
        if not (math.isfinite(fit.temperature) and fit.temperature > 0.0):
            raise InputError(f"{logits.name}: the fitted temperature is {fit.temperature} "
                             f"(status {fit.status}): no temperature to apply")
        document = {"temperature": fit.temperature, "source": "fitted", "status": fit.status,
                    "passes": fit.passes, "validation": logits.name,
                    "validation_rows": logits.n_rows, "nll_before": fit.nll_before,
                    "nll_after": fit.nll_after}
        if kind == "multiclass":
            document["ece_before"], document["ece_after"] = \
                passes.calibration_errors(fit.temperature)
        return document
    finally:
        logits.close()
        labels.close()


_OPENMP_KERNELS_MODULE = "logitcore._backends._cython_kernels"


def _idle_openmp_threads_sleep() -> None:
    """Makes the compiled kernels' OpenMP worker threads sleep between calls instead of
    spinning, unless the user set OMP_WAIT_POLICY. The pipeline's reader and writer
    threads run while the workers wait for the next chunk, and spinning workers take
    the cores those threads need (on 2 cores they doubled the run's CPU time); a chunk
    is large enough that waking the workers costs nothing in comparison. libgomp reads
    the variable once, when it is loaded, so this only works before the first
    compiled kernel runs in this process (as in the ``logitcore score`` command)."""
    if _OPENMP_KERNELS_MODULE not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _whole(source: RowSource, memory_bytes: int) -> np.ndarray:
    """Every row of ``source`` in one array (half precision widened to float32)."""
    size = source.n_rows * source.row_bytes
    if size > memory_bytes:
        raise InputError(f"{source.name}: the validation file ({size / 2**20:,.0f} MB) is fit "
                         f"in memory and is larger than the memory budget of "
                         f"{memory_bytes / 2**20:,.0f} MB: raise --memory")
    rows = source.read_into(np.empty(max(size, 1), np.uint8), source.n_rows)
    if rows.dtype.kind == "f" and rows.dtype.isnative and rows.dtype.itemsize >= 4:
        return rows
    if rows.dtype.kind in "iub":
        return rows.astype(np.int64)
    return rows.astype(np.float64 if rows.dtype.itemsize == 8 else np.float32)


def tune_on_validation(logits: RowSource, labels: RowSource, *, kind, metric, scored,
                       backend, memory_bytes) -> dict:
    """``tune_thresholds`` on validation rows read whole into memory (as
    fit_on_validation), for scoring the rows of ``scored``. Returns the JSON document:
    the tuned thresholds (logit, the metric's value and counts per class) and
    ``probability``, the thresholds ``score`` applies. Closes the sources."""
    try:
        _check_pairing(logits, labels, kind)
        if logits.row_shape != scored.row_shape:
            raise InputError(f"{logits.name}: validation rows of shape {logits.row_shape}, "
                             f"the scored rows have shape {scored.row_shape}")
        x = _whole(logits, memory_bytes)
        y = _whole(labels, memory_bytes)
    finally:
        logits.close()
        labels.close()
    if kind == "binary":
        x = x.reshape(len(x))
    try:
        # Exact on every backend: backends without the threshold passes use auto's.
        tuned = tune_thresholds(x, y, kind=kind, metric=metric,
                                backend=backend if backend in ("numpy", "numba") else None)
    except (ValueError, TypeError) as error:
        raise InputError(f"{logits.name}: tuning the thresholds: {error}") from None
    # score compares its float64 probabilities with the threshold in the scored rows'
    # dtype: round the tuned threshold down in that dtype, and into score's (0, 1) (a
    # class tuned to predict nothing, +inf, then predicts only probabilities that round
    # to 1 below 1: logits above about 17 in float32, 37 in float64).
    dtype = np.dtype(np.float64 if scored.dtype.itemsize == 8 else np.float32)
    applied = np.clip(_probability_below(np.atleast_1d(tuned.logit), dtype),
                      np.nextafter(dtype.type(0), dtype.type(1)),
                      np.nextafter(dtype.type(1), dtype.type(0)))
    document = {"source": "tuned", "metric": metric, "validation": logits.name,
                "validation_rows": logits.n_rows}
    for name, values in (("logit", tuned.logit), ("probability", applied),
                         ("value", tuned.value), ("tp", tuned.tp), ("fp", tuned.fp),
                         ("fn", tuned.fn), ("tn", tuned.tn)):
        values = [_finite_or_none(value) for value in np.atleast_1d(values).tolist()]
        document[name] = values[0] if kind == "binary" else values
    return document


def run(logits: RowSource, labels: RowSource | None, output: Path, *, kind, top_k,
        threshold, ignore_index, fields, backend, threads, memory_bytes, chunk_rows,
        overwrite, progress, temperature=None, validation=None, plot=None,
        tune=None) -> dict:
    """Scores every row of ``logits`` into ``output`` and returns the JSON summary
    (figures, rows, seconds, rows/s, GB/s, the temperature). Closes the sources.

    ``temperature``: divide the logits by it. ``validation``: a (logits, labels) pair of
    sources to fit the temperature on first (``fit_on_validation``). ``plot``: a path to
    draw the scored rows' reliability diagram to, from the merged summary's bins.
    ``tune``: a (logits, labels, metric) of validation sources to tune the thresholds on
    first (``tune_on_validation``); they replace ``threshold``."""
    calibration = tuned = None
    _idle_openmp_threads_sleep()
    try:
        _check_pairing(logits, labels, kind)
        if validation is not None:
            with _thread_count(threads):
                calibration = fit_on_validation(*validation, kind=kind,
                                                ignore_index=ignore_index, backend=backend,
                                                memory_bytes=memory_bytes)
            temperature = calibration["temperature"]
        elif temperature is not None:
            calibration = {"temperature": temperature, "source": "given"}
        if tune is not None:
            with _thread_count(threads):
                tuned = tune_on_validation(*tune[:2], kind=kind, metric=tune[2],
                                           scored=logits, backend=backend,
                                           memory_bytes=memory_bytes)
            threshold = tuned["probability"]
        sink = open_sink(output, logits.n_rows, overwrite)
        n_fields = len(fields) if fields else 16
        # One backend for every chunk, chosen for the whole file: "auto" picks by each
        # call's size, and a chunk run on another backend would round differently.
        backend = _config.resolve(f"score_{kind}", backend,
                                  logits.n_rows * (math.prod(logits.row_shape) or 1))[0]
        if chunk_rows is None:
            chunk_rows = chunk_rows_for(memory_bytes, logits, labels, n_fields, top_k, backend)
        else:
            chunk_rows = max(1, min(chunk_rows, max(logits.n_rows, 1)))
        scorer = _ChunkScorer(kind, top_k, threshold, ignore_index, fields, backend,
                              chunk_rows, logits.row_shape,
                              labels.name if labels is not None else "",
                              math.prod(logits.row_shape) or 1, temperature)
        pipeline = _Pipeline(logits, labels, sink, chunk_rows)
        bar = _Progress(logits.n_rows, logits.row_bytes, progress)
        committed = False
        started = time.perf_counter()
        summary = None
        try:
            with _sigterm_raises(), _thread_count(threads):
                for start, chunk, chunk_labels in pipeline.chunks():
                    scores = scorer(scorer.widened(chunk), chunk_labels, start)
                    part = scores.summary()
                    summary = part if summary is None else summary.merge(part)
                    pipeline.deliver(scores.to_dict())
                    bar.update(len(chunk))
                pipeline.finish()
                sink.commit()
                committed = True
        finally:
            with _signals_held():  # a second Ctrl-C must not leave the temporary file
                pipeline.stop()
                bar.close()
                if not committed:
                    sink.abort()
        seconds = time.perf_counter() - started
    finally:
        logits.close()
        if labels is not None:
            labels.close()
        if validation is not None:  # closed by fit_on_validation unless it never ran
            for source in validation:
                source.close()
        if tune is not None:  # closed by tune_on_validation unless it never ran
            for source in tune[:2]:
                source.close()
    document = _json_summary(logits, output, kind, summary, seconds, chunk_rows)
    document["calibration"] = calibration
    if tuned is not None:
        document["thresholds"] = tuned
    if plot is not None:
        draw_reliability(summary, Path(plot))
    return document


def draw_reliability(summary: Summary | None, path: Path) -> None:
    """The reliability diagram of a summary's calibration bins (no data read again)."""
    if summary is None or summary.bins is None:
        raise InputError(f"{path}: no calibration bins to draw (it needs labels)")
    require("matplotlib", "--plot").use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    figure = reliability_diagram(summary.bins, title="reliability of the scored rows")
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        figure.savefig(temp, dpi=80)
        os.replace(temp, path)
    finally:
        plt.close(figure)
        with contextlib.suppress(OSError):
            temp.unlink()


def _check_pairing(logits: RowSource, labels: RowSource | None, kind: str) -> None:
    if kind == "binary" and logits.row_shape not in ((), (1,)):
        raise InputError(f"{logits.name}: --kind binary takes one logit per row, got rows "
                         f"of shape {logits.row_shape} (--kind multilabel scores several "
                         f"independent logits per row)")
    if logits.row_shape and logits.row_shape[-1] == 0:
        raise InputError(f"{logits.name}: has 0 classes")
    if labels is None:
        return
    if labels.n_rows != logits.n_rows:
        raise InputError(f"{labels.name}: has {labels.n_rows} labels, but {logits.name} has "
                         f"{logits.n_rows} rows")
    wanted = logits.row_shape if kind == "multilabel" else ()
    if labels.row_shape != wanted:
        expected = f"a 0 / 1 row of {wanted[0]} per row" if wanted else "one per row"
        raise InputError(f"{labels.name}: labels for --kind {kind} must be {expected}, "
                         f"got rows of shape {labels.row_shape}")


@contextlib.contextmanager
def _thread_count(threads):
    if threads is None:
        yield
    else:
        with _config.config(n_threads=threads):
            yield


def _finite_or_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _json_summary(logits, output, kind, summary: Summary, seconds, chunk_rows) -> dict:
    n_rows = logits.n_rows
    figures = summary.figures() if summary is not None else {"n": 0}
    return {
        "input": logits.name, "output": str(output), "kind": kind, "rows": n_rows,
        "row_shape": list(logits.row_shape), "dtype": str(logits.dtype),
        "seconds": round(seconds, 6),
        "rows_per_s": n_rows / seconds if seconds > 0 else None,
        "gb_per_s": n_rows * logits.row_bytes / seconds / 1e9 if seconds > 0 else None,
        "chunk_rows": chunk_rows,
        "summary": {name: _finite_or_none(value) for name, value in figures.items()},
    }


def write_json(path: Path, document: dict, overwrite: bool) -> None:
    """``document`` as JSON (NaN as null, infinities as "inf" / "-inf"), written to a
    temporary file and renamed."""
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; pass --overwrite to replace it")
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        temp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        os.replace(temp, path)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def format_calibration(calibration: dict) -> str:
    """The temperature and, for a fitted one, the validation figures before and after."""
    if calibration["source"] == "given":
        return f"  temperature        {calibration['temperature']:.6g} (given)"
    lines = [f"  temperature        {calibration['temperature']:.6g} (fitted on "
             f"{calibration['validation_rows']:,} rows of {calibration['validation']}: "
             f"{calibration['status']}, {calibration['passes']} passes)",
             f"  validation NLL     {calibration['nll_before']:.4f} at T = 1 -> "
             f"{calibration['nll_after']:.4f}"]
    if "ece_before" in calibration:
        lines.append(f"  validation ECE     {100 * calibration['ece_before']:.2f}% at T = 1 -> "
                     f"{100 * calibration['ece_after']:.2f}%")
    lines.append("  (ece / mce above: the scored rows, with the temperature applied)")
    return "\n".join(lines)


def format_summary(document: dict) -> str:
    """The summary figures as aligned lines."""
    lines = []
    for name, value in document["summary"].items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        lines.append(f"  {name:<18} {value}")
    rate = document["rows_per_s"]
    lines.append(f"  {'seconds':<18} {document['seconds']:.2f}"
                 + (f"  ({rate:,.0f} rows/s, {document['gb_per_s']:.3f} GB/s)" if rate else ""))
    return "\n".join(lines)
