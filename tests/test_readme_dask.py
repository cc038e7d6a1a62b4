"""The README's Dask example runs as written (a subprocess: its LocalCluster's worker
processes re-import the program, which needs a real file and a __main__ guard)."""

import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("distributed")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_dask_example_runs(tmp_path):
    blocks = [block for block in re.findall(r"```py\n(.*?)```", README.read_text(), re.S)
              if "LocalCluster" in block]
    assert len(blocks) == 1
    program = tmp_path / "dask_example.py"
    program.write_text(blocks[0])
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = dict(re.findall(r"(loss|accuracy|ECE|fitted T) ([0-9.]+)", result.stdout))
    assert set(figures) == {"loss", "accuracy", "ECE", "fitted T"}, result.stdout
    # 70 % of the labels are the argmax: the figures say so, independently of logitcore
    assert 0.69 < float(figures["accuracy"]) < 0.71
    assert float(figures["fitted T"]) > 0
