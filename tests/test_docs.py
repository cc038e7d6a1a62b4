"""Every docstring example and the README's API tour run and print what they claim."""

import doctest
import pathlib
import re

import pytest

import logitcore
from logitcore import _calibration, _config, _info, _ops, _score, memory_bandwidth

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("module", [_ops, _score, _calibration, _config, _info, memory_bandwidth], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_readme_api_tour_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    logitcore.set_backend("auto")


def test_calibration_guide_runs():
    """docs/calibration.md's examples, in order, in one namespace (later blocks use the
    fit and the split of the first)."""
    pytest.importorskip("matplotlib")
    text = (README.parent / "docs" / "calibration.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/calibration.md", "exec"), namespace)
    assert namespace["after"] < namespace["before"]
