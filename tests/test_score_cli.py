"""`logitcore score` end to end: the CLI run as a subprocess on files made here.

Every output column is compared with in-memory ``logitcore.score`` on the same rows (and
the loss and prediction with SciPy / NumPy), the Parquet file is read back by DuckDB,
interrupts leave nothing behind, and every bad input gives one line and exit status 1.
Optional modules (pyarrow, safetensors, ml_dtypes, tqdm, duckdb) skip what needs them.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.special

import logitcore
from logitcore import _score_files

N_ROWS, N_CLASSES, TOP_K = 1000, 37, 3


def run_cli(*args, cwd=None, timeout=180, prelude=""):
    """`python -m logitcore score ARGS` (with ``prelude`` run first in the process)."""
    code = (f"{prelude}\nimport sys\nfrom logitcore.cli import main\n"
            f"raise SystemExit(main(['score', *sys.argv[1:]]))")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def make_logits(dtype=np.float32, n_rows=N_ROWS, n_classes=N_CLASSES, seed=0):
    """Logits with a NaN row, a +inf row, an all -inf row and a masked row."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n_rows, n_classes)) * 3).astype(np.float64)
    logits[5, 2] = np.nan
    logits[6, 0] = np.inf
    logits[7] = -np.inf
    logits[8, ::2] = -np.inf
    labels = rng.integers(0, n_classes, n_rows)
    labels[8] = 0  # a masked (-inf) class: loss +inf
    labels[9] = -100
    return logits.astype(dtype), labels


def expected_scores(logits, labels, **options):
    """In-memory score() of the rows as the CLI computes them (half precision widened)."""
    if logits.dtype.itemsize == 2:
        logits = logits.astype(np.float32)
    return logitcore.score(logits, labels, **options)


def assert_columns_equal(columns: dict, expected, n_rows):
    """Integer and flag fields exactly; float fields to a few units in the last place: a
    chunk of a few rows may take another schedule of the compiled kernels than the whole
    array (narrow rows are summed across a tile of rows, a lone row along itself), and
    the two round differently."""
    assert list(columns) == list(expected.fields)
    for name in expected.fields:
        got, want = np.asarray(columns[name]), expected[name]
        assert got.shape[0] == n_rows, name
        assert got.dtype == want.dtype, name
        if want.dtype.kind == "f":
            eps = np.finfo(want.dtype).eps
            np.testing.assert_allclose(got, want, rtol=4 * eps, atol=4 * eps, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def check_against_peers(columns: dict, logits, labels):
    """The loss against SciPy's log_softmax and pred against NumPy's argmax, on the rows
    without NaN or +inf and with a kept label."""
    x = logits.astype(np.float64)
    ok = ~np.isnan(x).any(axis=1) & ~np.isposinf(x).any(axis=1) & (labels != -100) \
        & np.isfinite(x).any(axis=1)
    log_probs = scipy.special.log_softmax(x[ok], axis=1)
    loss = -log_probs[np.arange(ok.sum()), labels[ok]]
    tolerance = 1e-5 if logits.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(columns["loss"][ok], loss, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(columns["pred"][ok], np.argmax(x[ok], axis=1))


def read_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def read_csv(path, expected):
    """CSV columns in the dtypes of ``expected`` (2-D fields from their _0, _1, ...)."""
    header = Path(path).read_text().splitlines()[0].split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str, ndmin=2)
    columns = {}
    for name in expected.fields:
        want = expected[name]
        if want.ndim == 1:
            text = table[:, header.index(name)]
        else:
            text = table[:, [header.index(f"{name}_{j}") for j in range(want.shape[1])]]
        columns[name] = text == "true" if want.dtype == np.bool_ else text.astype(want.dtype)
    return columns


# --- round trips ---------------------------------------------------------------------------

def test_npy_to_parquet_read_back_by_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("pyarrow")
    logits, labels = make_logits()
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    result = run_cli(tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "-o",
                     tmp_path / "out.parquet", "--top-k", TOP_K, "--chunk-rows", 64,
                     "--summary", tmp_path / "summary.json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar: stderr is not a terminal
    expected = expected_scores(logits, labels, top_k=TOP_K)
    relation = duckdb.sql(f"select * from read_parquet('{tmp_path / 'out.parquet'}')")
    types = dict(zip(relation.columns, map(str, relation.types)))
    assert types["pred"] == types["label_rank"] == "BIGINT"
    assert types["confidence"] == types["loss"] == "FLOAT"
    assert types["correct"] == types["kept"] == "BOOLEAN"
    assert types["top_k_indices"] in ("BIGINT[]", f"BIGINT[{TOP_K}]")
    assert types["top_k_probs"] in ("FLOAT[]", f"FLOAT[{TOP_K}]")
    columns = relation.fetchnumpy()
    for name in ("top_k_indices", "top_k_probs"):
        columns[name] = np.stack(list(columns[name]))
    assert_columns_equal(columns, expected, N_ROWS)
    check_against_peers(columns, logits, labels)
    assert duckdb.sql(f"select count(*) from read_parquet('{tmp_path / 'out.parquet'}')"
                      ).fetchall() == [(N_ROWS,)]
    # the summary merged over 16 chunks is the one-shot summary
    document = json.loads((tmp_path / "summary.json").read_text())
    figures = expected.summary().figures()
    assert document["rows"] == N_ROWS and document["chunk_rows"] == 64
    assert document["summary"]["nan_rows"] == 1 and document["summary"]["posinf_rows"] == 1
    assert document["summary"]["neginf_rows"] == 1
    assert figures["mean_max_logit"] != figures["mean_max_logit"]  # +inf and -inf rows
    assert figures["mean_nll"] == np.inf  # the masked row's label is a -inf class
    for name, value in figures.items():
        if value != value:
            assert document["summary"][name] is None, name  # JSON has no NaN
        elif value in (np.inf, -np.inf):
            assert document["summary"][name] == ("inf" if value > 0 else "-inf"), name
        else:
            # means of float32 fields that agree to a few ulp (assert_columns_equal)
            assert document["summary"][name] == pytest.approx(value, rel=1e-6), name
    assert document["rows_per_s"] > 0 and document["gb_per_s"] > 0
    assert "accuracy" in result.stdout


def test_parquet_dictionary_encodes_only_integer_columns(tmp_path):
    """Float fields are written plain (hashing them into a dictionary cost more than
    scoring them); class indices and ranks keep their dictionary."""
    pq = pytest.importorskip("pyarrow.parquet")
    logits, labels = make_logits()
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    result = run_cli(tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "-o",
                     tmp_path / "out.parquet", "--top-k", TOP_K)
    assert result.returncode == 0, result.stderr
    group = pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(0)
    encodings = {group.column(i).path_in_schema.split(".")[0]: group.column(i).encodings
                 for i in range(group.num_columns)}
    for name in ("pred", "label_rank", "top_k_indices"):
        assert "RLE_DICTIONARY" in encodings[name], name
    for name in ("confidence", "loss", "entropy", "top_k_probs"):
        assert "RLE_DICTIONARY" not in encodings[name], name


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_openmp_workers_sleep_between_chunks_unless_told(tmp_path, given):
    """The command sets OMP_WAIT_POLICY=PASSIVE before the compiled kernels load (their
    spinning workers took the cores the reader and writer threads need), and keeps a
    policy the user set."""
    np.save(tmp_path / "x.npy", make_logits()[0])
    prelude = ("import atexit, os\n"
               + (f"os.environ['OMP_WAIT_POLICY'] = {given!r}\n" if given else
                  "os.environ.pop('OMP_WAIT_POLICY', None)\n")
               + "atexit.register(lambda: print('policy', os.environ.get('OMP_WAIT_POLICY')))")
    result = run_cli(tmp_path / "x.npy", "-o", tmp_path / "out.npz", prelude=prelude)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"policy {given or 'PASSIVE'}"


@pytest.mark.parametrize("output", ["out.npz", "out.csv"])
def test_npz_input_to_npz_and_csv(tmp_path, output):
    logits, labels = make_logits(np.float64)
    np.savez_compressed(tmp_path / "data.npz", logits=logits, labels=labels)
    result = run_cli(f"{tmp_path / 'data.npz'}:logits", "--labels",
                     f"{tmp_path / 'data.npz'}:labels", "-o", tmp_path / output,
                     "--top-k", TOP_K, "--memory", 1)
    assert result.returncode == 0, result.stderr
    expected = expected_scores(logits, labels, top_k=TOP_K)
    columns = (read_npz(tmp_path / output) if output.endswith(".npz")
               else read_csv(tmp_path / output, expected))
    assert_columns_equal(columns, expected, N_ROWS)
    check_against_peers(columns, logits, labels)


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_safetensors_input(tmp_path, dtype):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    logits, labels = make_logits(dtype)
    save_file({"other": np.zeros(3, np.float32), "logits": logits}, tmp_path / "m.safetensors")
    (tmp_path / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    result = run_cli(f"{tmp_path / 'm.safetensors'}:logits", "--labels",
                     tmp_path / "labels.txt", "-o", tmp_path / "out.npz", "--chunk-rows", 100)
    assert result.returncode == 0, result.stderr
    expected = expected_scores(logits.astype(np.float32), labels)
    assert_columns_equal(read_npz(tmp_path / "out.npz"), expected, N_ROWS)


def test_raw_float16_and_big_endian_npy(tmp_path):
    logits, labels = make_logits(np.float16)
    logits.tofile(tmp_path / "x.f16")
    result = run_cli(tmp_path / "x.f16", "--dtype", "float16", f"--shape=-1x{N_CLASSES}",
                     "-o", tmp_path / "raw.npz", "--fields", "pred,confidence,entropy")
    assert result.returncode == 0, result.stderr
    expected = expected_scores(logits, None, fields=["pred", "confidence", "entropy"])
    assert_columns_equal(read_npz(tmp_path / "raw.npz"), expected, N_ROWS)

    big_endian = logits.astype(">f4")
    np.save(tmp_path / "be.npy", big_endian)
    result = run_cli(tmp_path / "be.npy", "-o", tmp_path / "be.npz", "--chunk-rows", 7)
    assert result.returncode == 0, result.stderr
    assert_columns_equal(read_npz(tmp_path / "be.npz"),
                         expected_scores(big_endian.astype(np.float32), None), N_ROWS)


def test_bfloat16_npy_needs_the_dtype(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    logits, labels = make_logits(ml_dtypes.bfloat16)
    np.save(tmp_path / "x.npy", logits)  # NumPy stores bfloat16 as 2-byte voids
    result = run_cli(tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert result.returncode == 1 and "--dtype bfloat16" in result.stderr
    result = run_cli(tmp_path / "x.npy", "--dtype", "bfloat16", "-o", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    assert_columns_equal(read_npz(tmp_path / "out.npz"), expected_scores(logits, None),
                         N_ROWS)


def test_parquet_input_and_label_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    logits, labels = make_logits()
    column = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), N_CLASSES)
    pq.write_table(pa.table({"id": np.arange(N_ROWS), "logits": column,
                             "label": labels.astype(np.int32)}),
                   tmp_path / "in.parquet", row_group_size=300)
    result = run_cli(tmp_path / "in.parquet", "--labels", f"{tmp_path / 'in.parquet'}:label",
                     "-o", tmp_path / "out.parquet", "--top-k", 2, "--chunk-rows", 128)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert pa.types.is_fixed_size_list(table.schema.field("top_k_indices").type)
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    for name in ("top_k_indices", "top_k_probs"):
        columns[name] = np.stack(columns[name])
    assert_columns_equal(columns, expected_scores(logits, labels, top_k=2), N_ROWS)


def test_binary_and_multilabel_kinds(tmp_path):
    rng = np.random.default_rng(1)
    binary = rng.normal(size=N_ROWS).astype(np.float32)
    targets = rng.integers(0, 2, N_ROWS)
    np.save(tmp_path / "b.npy", binary)
    np.save(tmp_path / "t.npy", targets)
    result = run_cli(tmp_path / "b.npy", "--labels", tmp_path / "t.npy", "--kind", "binary",
                     "--threshold", "0.3", "-o", tmp_path / "b.npz", "--chunk-rows", 99)
    assert result.returncode == 0, result.stderr
    expected = logitcore.score(binary, targets, kind="binary", threshold=0.3)
    columns = read_npz(tmp_path / "b.npz")
    assert_columns_equal(columns, expected, N_ROWS)
    np.testing.assert_allclose(columns["prob"], scipy.special.expit(binary), rtol=1e-6)

    multi = rng.normal(size=(N_ROWS, 4))
    matrix = rng.integers(0, 2, (N_ROWS, 4)).astype(bool)
    np.save(tmp_path / "m.npy", multi)
    np.save(tmp_path / "mt.npy", matrix)
    result = run_cli(tmp_path / "m.npy", "--labels", tmp_path / "mt.npy", "--kind",
                     "multilabel", "--threshold", "0.5,0.5,0.3,0.9", "--fields",
                     "pred,loss,exact_match", "-o", tmp_path / "m.csv", "--chunk-rows", 250)
    assert result.returncode == 0, result.stderr
    expected = logitcore.score(multi, matrix, kind="multilabel",
                               threshold=[0.5, 0.5, 0.3, 0.9],
                               fields=["pred", "loss", "exact_match"])
    assert_columns_equal(read_csv(tmp_path / "m.csv", expected), expected, N_ROWS)


def test_three_dimensional_logits_are_rows_in_c_order(tmp_path):
    logits = np.random.default_rng(2).normal(size=(4, 25, 11)).astype(np.float32)
    labels = np.random.default_rng(3).integers(0, 11, (4, 25))
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    result = run_cli(tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "-o",
                     tmp_path / "out.npz", "--chunk-rows", 30)
    assert result.returncode == 0, result.stderr
    expected = logitcore.score(logits.reshape(100, 11), labels.reshape(100))
    assert_columns_equal(read_npz(tmp_path / "out.npz"), expected, 100)


def test_zero_rows_give_an_empty_output(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 5), np.float32))
    result = run_cli(tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    columns = read_npz(tmp_path / "out.npz")
    assert columns["pred"].shape == (0,) and columns["confidence"].dtype == np.float32


# --- the demo and the progress bar ---------------------------------------------------------

def test_demo_writes_parquet_and_summary(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pytest.importorskip("matplotlib")
    result = run_cli("--demo", "--demo-rows", 5000, "-o", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "demo" / "summary.json").read_text())
    figures, calibration = document["summary"], document["calibration"]
    assert document["rows"] == figures["n"] == 5000
    # The model is over-confident (T = 2.5 is the exact fix of the demo's data): at T = 1
    # the validation ECE is large; the fitted T brings it, and the scored rows', down.
    assert calibration["source"] == "fitted" and calibration["status"] == "optimal"
    assert 2.2 < calibration["temperature"] < 2.8
    assert calibration["ece_before"] > 0.15 and calibration["ece_after"] < 0.03
    assert calibration["nll_after"] < calibration["nll_before"]
    assert 0.63 < figures["accuracy"] < 0.73
    assert abs(figures["mean_confidence"] - figures["accuracy"]) < 0.03 and figures["ece"] < 0.03
    assert pq.read_metadata(tmp_path / "demo" / "scores.parquet").num_rows == 5000
    assert (tmp_path / "demo" / "reliability.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "over-confident" in result.stdout and "after calibration" in result.stdout


def test_demo_data_do_not_depend_on_the_chunk_size():
    labels = _score_files.demo_labels(70000, seed=5)
    whole = _score_files.DemoRows(labels, seed=5)
    chunked = _score_files.DemoRows(labels, seed=5)
    buffer = np.empty(70000 * whole.row_bytes, np.uint8)
    expected = whole.read_into(buffer, 70000).copy()
    parts = [chunked.read_into(np.empty(n * whole.row_bytes, np.uint8), n).copy()
             for n in (1, 40000, 29999)]
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    # the true class has DEMO_SIGNAL more evidence: it is the argmax about 68% of the time
    assert 0.66 < np.mean(expected.argmax(axis=1) == labels) < 0.70


def test_progress_bar_on_a_terminal(tmp_path):
    pytest.importorskip("tqdm")
    np.save(tmp_path / "x.npy", make_logits()[0])
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "logitcore", "score", str(tmp_path / "x.npy"), "-o",
             str(tmp_path / "out.npz"), "--chunk-rows", "100"],
            stdout=subprocess.PIPE, stderr=follower, text=True)
        os.close(follower)
        stdout, _ = process.communicate(timeout=180)
        terminal = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the process closed its end
                break
            if not data:
                break
            terminal += data
    finally:
        os.close(leader)
    assert process.returncode == 0
    text = terminal.decode(errors="replace")
    assert "1.00k/1.00k" in text and "rows/s" in text and "GB/s" in text
    assert "scored 1,000 rows" in stdout

    quiet = run_cli(tmp_path / "x.npy", "-o", tmp_path / "q.npz", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


# --- nothing lost -------------------------------------------------------------------------

@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_no_partial_output(tmp_path, signum, status):
    pytest.importorskip("pyarrow")
    out = tmp_path / "out" / "scores.parquet"
    out.parent.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "logitcore", "score", "--demo", "--demo-rows", "2000000",
         "--chunk-rows", "2000", "-o", str(out.parent), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # mid-file: the writer has started the temporary file
    while not list(out.parent.glob(".scores.parquet.*.partial")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert "no output written" in stderr and "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    np.save(tmp_path / "x.npy", make_logits()[0])
    (tmp_path / "out.npz").write_bytes(b"keep me")
    result = run_cli(tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert (tmp_path / "out.npz").read_bytes() == b"keep me"
    result = run_cli(tmp_path / "x.npy", "-o", tmp_path / "out.npz", "--overwrite")
    assert result.returncode == 0 and zipfile.is_zipfile(tmp_path / "out.npz")


# --- bad input: one line, exit status 1 ------------------------------------------------------

def _bad_inputs(tmp_path):
    logits, labels = make_logits(n_rows=50)
    np.save(tmp_path / "x.npy", logits)
    good = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(good[:-100])
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPX" + good[6:])
    # a header that claims 10^12 rows: refused before anything is allocated or mapped
    with open(tmp_path / "huge.npy", "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False,
                                                    "shape": (10**12, 37)})
        file.write(good[128:])
    # a row of 800 kB: its three input buffers alone outgrow --memory 1 (MB)
    np.save(tmp_path / "wide.npy", np.zeros((2, 200000), np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None]), allow_pickle=True)
    np.save(tmp_path / "ints.npy", labels.reshape(5, 10))
    np.save(tmp_path / "complex.npy", logits.astype(np.complex64))
    np.save(tmp_path / "short_labels.npy", labels[:-1])
    np.save(tmp_path / "float_labels.npy", labels.astype(np.float32))
    bad_labels = labels.copy()
    bad_labels[42] = 37
    np.save(tmp_path / "bad_labels.npy", bad_labels)
    (tmp_path / "labels.txt").write_text("1\n2\nthree\n" + "0\n" * 47)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(logits))
    np.savez(tmp_path / "two.npz", a=logits, b=logits)
    return {
        "missing file": ([tmp_path / "nope.npy"], "nope.npy: no such file"),
        "truncated npy": ([tmp_path / "truncated.npy"], "truncated"),
        "corrupt npy": ([tmp_path / "corrupt.npy"], "not a valid .npy file"),
        "huge header": ([tmp_path / "huge.npy"], "truncated"),
        "object dtype": ([tmp_path / "objects.npy"], "object arrays are refused"),
        "integer logits": ([tmp_path / "ints.npy"], "dtype int64 is not supported"),
        "complex logits": ([tmp_path / "complex.npy"], "dtype complex64 is not supported"),
        "fortran order": ([tmp_path / "fortran.npy"], "Fortran order"),
        "labels length": ([tmp_path / "x.npy", "--labels", tmp_path / "short_labels.npy"],
                          "has 49 labels, but"),
        "float labels": ([tmp_path / "x.npy", "--labels", tmp_path / "float_labels.npy"],
                         "labels must be integers"),
        "label out of range": ([tmp_path / "x.npy", "--labels", tmp_path / "bad_labels.npy"],
                               "row 42 has label 37"),
        "text label": ([tmp_path / "x.npy", "--labels", tmp_path / "labels.txt"],
                       "labels.txt line 3: 'three' is not an integer"),
        "npz without a name": ([tmp_path / "two.npz"], "name one as"),
        "npz wrong name": ([f"{tmp_path / 'two.npz'}:c"], "has no array 'c'"),
        "raw without shape": ([tmp_path / "labels.txt"],
                              "raw binary input needs --dtype and --shape"),
        "raw size": ([tmp_path / "labels.txt", "--dtype", "float32", "--shape", "3x5"],
                     "needs 60"),
        "1-d multiclass": ([tmp_path / "short_labels.npy"], "--kind binary"),
        "output format": ([tmp_path / "x.npy", "-o", tmp_path / "out.txt"],
                          "output format comes from the extension"),
        "top-k too large": ([tmp_path / "x.npy", "--top-k", 38], "top_k must be in [0, 37]"),
        "unknown backend": ([tmp_path / "x.npy", "--backend", "nope"], "'nope'"),
        "memory too small": ([tmp_path / "wide.npy", "--memory", 1], "raise --memory"),
    }


BAD_INPUTS = ["missing file", "truncated npy", "corrupt npy", "huge header", "object dtype",
              "integer logits", "complex logits", "fortran order", "labels length",
              "float labels", "label out of range", "text label", "npz without a name",
              "npz wrong name", "raw without shape", "raw size", "1-d multiclass",
              "output format", "top-k too large", "unknown backend", "memory too small"]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_status_1(bad_inputs, tmp_path, case):
    args, message = bad_inputs[case]
    if "-o" not in args:
        args = [*args, "-o", tmp_path / "out.npz"]
    result = run_cli(*args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("logitcore score: error: "), lines
    assert message in lines[0]
    assert not [p for p in tmp_path.iterdir()], "an output or temporary file was left"


def test_missing_extra_names_the_install_command(tmp_path):
    np.save(tmp_path / "x.npy", make_logits()[0])
    result = run_cli(tmp_path / "x.npy", "-o", tmp_path / "out.parquet",
                     prelude="import sys; sys.modules['pyarrow'] = None")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'logitcore score: error: Parquet output needs pyarrow, which is not installed: '
        'pip install "logitcore[parquet]" (or "logitcore[cli]" for every optional part of '
        'the command line)')


def test_usage_errors_exit_2(tmp_path):
    result = run_cli(tmp_path / "x.npy")
    assert result.returncode == 2 and "-o OUT" in result.stderr
    result = run_cli(tmp_path / "x.npy", "-o", "o.npz", "--chunk-rows", 5, "--memory", 9)
    assert result.returncode == 2 and "not allowed with" in result.stderr


# --- calibration: --temperature, --fit-temperature, --plot ------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def overconfident(n_rows, seed, n_classes=10):
    """Labels drawn from softmax(z), logits 2.5 z in float32: an over-confident model."""
    rng = np.random.default_rng(seed)
    z = 1.6 * rng.standard_normal((n_rows, n_classes))
    p = scipy.special.softmax(z, axis=1)
    labels = np.minimum((rng.random((n_rows, 1)) > p.cumsum(axis=1)).sum(axis=1),
                        n_classes - 1)
    return (2.5 * z).astype(np.float32), labels


def reference_ece(logits, labels, n_bins=15):
    """Top-label ECE and MCE with 15 bins (lo, hi] in float64 SciPy / NumPy (Guo et al.)."""
    p = scipy.special.softmax(logits.astype(np.float64), axis=1)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    gaps, weights = [], []
    for k in range(n_bins):
        inside = which == k
        if inside.any():
            gaps.append(abs(correct[inside].mean() - confidence[inside].mean()))
            weights.append(inside.mean())
    return float(np.dot(gaps, weights)), float(max(gaps))


def reference_temperature(logits, labels):
    """The NLL minimiser by SciPy's bounded scalar minimisation (on log T)."""
    x = logits.astype(np.float64)

    def nll(log_t):
        log_p = scipy.special.log_softmax(x / np.exp(log_t), axis=1)
        return -log_p[np.arange(len(x)), labels].mean()

    found = scipy.optimize.minimize_scalar(nll, bounds=(-3, 3), method="bounded",
                                           options={"xatol": 1e-10})
    return float(np.exp(found.x))


@pytest.fixture(scope="module")
def calibration_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    for name, (rows, seed) in {"val": (3000, 1), "test": (2000, 2)}.items():
        logits, labels = overconfident(rows, seed)
        np.save(folder / f"{name}_x.npy", logits)
        np.save(folder / f"{name}_y.npy", labels)
    return folder


def load(folder, name):
    return np.load(folder / f"{name}_x.npy"), np.load(folder / f"{name}_y.npy")


def test_temperature_divides_the_logits(calibration_files, tmp_path):
    x, y = load(calibration_files, "test")
    result = run_cli(calibration_files / "test_x.npy", "--labels", calibration_files /
                     "test_y.npy", "--temperature", 2.5, "-o", tmp_path / "out.npz",
                     "--summary", tmp_path / "s.json", "--chunk-rows", 300)
    assert result.returncode == 0, result.stderr
    scaled = x / np.float32(2.5)
    expected = logitcore.score(scaled, y)
    assert_columns_equal(read_npz(tmp_path / "out.npz"), expected, len(x))
    log_p = scipy.special.log_softmax(x.astype(np.float64) / 2.5, axis=1)
    np.testing.assert_allclose(read_npz(tmp_path / "out.npz")["loss"],
                               -log_p[np.arange(len(x)), y], rtol=1e-5)
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["calibration"] == {"temperature": 2.5, "source": "given"}
    ece, mce = reference_ece(scaled, y)
    assert document["summary"]["ece"] == pytest.approx(ece, abs=1e-6)
    assert document["summary"]["mce"] == pytest.approx(mce, abs=1e-6)
    assert "temperature        2.5 (given)" in result.stdout


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bad_temperature_is_one_line_and_status_1(calibration_files, tmp_path, value):
    result = run_cli(calibration_files / "test_x.npy", f"--temperature={value}",
                     "-o", tmp_path / "out.npz")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"logitcore score: error: --temperature must be a "
                                     f"finite number > 0, got {float(value)}")
    assert not list(tmp_path.iterdir())


def test_fit_temperature_on_validation_files(calibration_files, tmp_path):
    pytest.importorskip("matplotlib")
    x, y = load(calibration_files, "test")
    val_x, val_y = load(calibration_files, "val")
    result = run_cli(calibration_files / "test_x.npy", "--labels",
                     calibration_files / "test_y.npy", "--fit-temperature",
                     calibration_files / "val_x.npy", calibration_files / "val_y.npy",
                     "-o", tmp_path / "out.npz", "--summary", tmp_path / "s.json",
                     "--plot", tmp_path / "reliability.png", "--chunk-rows", 700)
    assert result.returncode == 0, result.stderr
    calibration = json.loads((tmp_path / "s.json").read_text())["calibration"]
    fit = logitcore.fit_temperature(val_x, val_y)
    assert calibration["temperature"] == fit.temperature
    assert calibration["temperature"] == pytest.approx(reference_temperature(val_x, val_y),
                                                       rel=1e-6)
    assert calibration["source"] == "fitted" and calibration["status"] == "optimal"
    assert calibration["passes"] == fit.passes and calibration["validation_rows"] == 3000
    log_p = scipy.special.log_softmax(val_x.astype(np.float64), axis=1)
    assert calibration["nll_before"] == pytest.approx(-log_p[np.arange(3000), val_y].mean(),
                                                      rel=1e-6)
    assert calibration["nll_after"] == pytest.approx(fit.nll_after, rel=1e-12)
    assert calibration["ece_before"] == pytest.approx(reference_ece(val_x, val_y)[0], abs=1e-6)
    assert calibration["ece_after"] == pytest.approx(
        reference_ece(val_x / np.float32(fit.temperature), val_y)[0], abs=1e-6)
    assert calibration["ece_after"] < calibration["ece_before"] / 4
    # the scored rows: divided by the fitted T
    scaled = x / np.float32(fit.temperature)
    assert_columns_equal(read_npz(tmp_path / "out.npz"), logitcore.score(scaled, y), len(x))
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert summary["ece"] == pytest.approx(reference_ece(scaled, y)[0], abs=1e-6)
    assert (tmp_path / "reliability.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "validation ECE" in result.stdout


def test_fit_temperature_streams_a_validation_file_larger_than_the_memory_budget(
        calibration_files, tmp_path):
    """40000 rows (1.6 MB of logits) over --memory 1: the fit reads them in chunks once
    per pass, and agrees with the in-memory fit and with SciPy's minimiser."""
    big_x, big_y = overconfident(40000, 3)
    big_y[::97] = -100  # left out of the fit
    np.save(tmp_path / "big_x.npy", big_x)
    np.save(tmp_path / "big_y.npy", big_y)
    result = run_cli(calibration_files / "test_x.npy", "--labels",
                     calibration_files / "test_y.npy", "--fit-temperature",
                     tmp_path / "big_x.npy", tmp_path / "big_y.npy", "--memory", 1,
                     "-o", tmp_path / "out.npz", "--summary", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    calibration = json.loads((tmp_path / "s.json").read_text())["calibration"]
    kept = big_y != -100
    fit = logitcore.fit_temperature(big_x, big_y)
    # chunk sums add up in another order than one pass over all rows: float64 rounding
    assert calibration["temperature"] == pytest.approx(fit.temperature, rel=1e-9)
    assert calibration["temperature"] == pytest.approx(
        reference_temperature(big_x[kept], big_y[kept]), rel=1e-6)
    assert calibration["status"] == "optimal" and calibration["validation_rows"] == 40000
    log_p = scipy.special.log_softmax(big_x[kept].astype(np.float64), axis=1)
    assert calibration["nll_before"] == pytest.approx(
        -log_p[np.arange(kept.sum()), big_y[kept]].mean(), rel=1e-9)
    assert calibration["nll_after"] == pytest.approx(fit.nll_after, rel=1e-9)
    assert calibration["ece_before"] == pytest.approx(
        reference_ece(big_x[kept], big_y[kept])[0], abs=1e-6)
    assert calibration["ece_after"] == pytest.approx(
        reference_ece(big_x[kept] / np.float32(fit.temperature), big_y[kept])[0], abs=1e-6)
    x, y = load(calibration_files, "test")
    assert_columns_equal(read_npz(tmp_path / "out.npz"),
                         logitcore.score(x / np.float32(calibration["temperature"]), y),
                         len(x))


def test_fit_binary_temperature_streamed(tmp_path):
    """Binary logits over --memory 1 (in chunks) against SciPy's minimiser of the mean
    sigmoid NLL, and the in-memory fit."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=300000)
    labels = (rng.random(z.size) < scipy.special.expit(z)).astype(np.int64)
    logits = (3.0 * z).astype(np.float32)  # over-confident 3x: T near 3
    labels[::50] = -100
    np.save(tmp_path / "val_x.npy", logits)
    np.save(tmp_path / "val_y.npy", labels)
    np.save(tmp_path / "x.npy", logits[:100])
    result = run_cli(tmp_path / "x.npy", "--kind", "binary", "--fit-temperature",
                     tmp_path / "val_x.npy", tmp_path / "val_y.npy", "--memory", 1,
                     "-o", tmp_path / "out.npz", "--summary", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    calibration = json.loads((tmp_path / "s.json").read_text())["calibration"]
    kept = labels != -100
    x, t = logits[kept].astype(np.float64), labels[kept]

    def nll(log_t):
        signed = np.where(t == 1, 1.0, -1.0) * x / np.exp(log_t)
        return np.logaddexp(0.0, -signed).mean()

    found = scipy.optimize.minimize_scalar(nll, bounds=(-3, 3), method="bounded",
                                           options={"xatol": 1e-10})
    assert calibration["temperature"] == pytest.approx(float(np.exp(found.x)), rel=1e-6)
    fit = logitcore.fit_temperature(logits, labels, kind="binary")
    assert calibration["temperature"] == pytest.approx(fit.temperature, rel=1e-9)
    assert calibration["nll_before"] == pytest.approx(nll(0.0), rel=1e-9)


def test_fit_temperature_that_gives_no_temperature(calibration_files, tmp_path):
    x = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4] * 4] * 3  # separable: T -> 0
    np.save(tmp_path / "sep_x.npy", x)
    np.save(tmp_path / "sep_y.npy", np.array([0, 1, 2, 3, 4] * 4))
    result = run_cli(calibration_files / "test_x.npy", "--fit-temperature",
                     tmp_path / "sep_x.npy", tmp_path / "sep_y.npy", "-o", tmp_path / "o.npz")
    assert result.returncode == 1
    assert "the fitted temperature is 0.0 (status separable)" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "o.npz").exists()


def test_plot_svg_of_binary_scores(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 500)
    logits = (3.0 * (2 * labels - 1) + 2.0 * rng.standard_normal(500)).astype(np.float32)
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    result = run_cli(tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--kind", "binary",
                     "-o", tmp_path / "o.npz", "--plot", tmp_path / "r.svg")
    assert result.returncode == 0, result.stderr
    assert b"<svg" in (tmp_path / "r.svg").read_bytes()[:1000]


def test_plot_errors_before_any_work(calibration_files, tmp_path):
    args = [calibration_files / "test_x.npy", "--labels", calibration_files / "test_y.npy",
            "-o", tmp_path / "out.npz"]
    result = run_cli(*args, "--plot", tmp_path / "r.png",
                     prelude="import sys; sys.modules['matplotlib'] = None")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'logitcore score: error: --plot needs matplotlib, which is not installed: '
        'pip install "logitcore[plot]" (or "logitcore[cli]" for every optional part of '
        'the command line)')
    # the other checks come after the one for matplotlib: they need it installed
    pytest.importorskip("matplotlib")
    result = run_cli(calibration_files / "test_x.npy", "-o", tmp_path / "out.npz",
                     "--plot", tmp_path / "r.png")
    assert result.returncode == 1 and "it needs --labels" in result.stderr
    result = run_cli(*args, "--plot", tmp_path / "r.gif")
    assert result.returncode == 1 and "--plot writes .png, .svg, .pdf" in result.stderr
    assert not list(tmp_path.iterdir())


def test_temperature_options_are_mutually_exclusive(calibration_files, tmp_path):
    result = run_cli(calibration_files / "test_x.npy", "-o", tmp_path / "out.npz",
                     "--temperature", 2, "--fit-temperature", calibration_files / "val_x.npy",
                     calibration_files / "val_y.npy")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
