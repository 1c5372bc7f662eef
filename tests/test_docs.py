"""The runnable examples in the method files' docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

import xcam.methods


@pytest.mark.parametrize("name", ["xcam.methods.gradcam", "xcam.methods.cam"])
def test_method_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0


def test_every_method_file_names_its_paper() -> None:
    for method in xcam.list_methods():
        doc = importlib.import_module(xcam.get_method(method).__module__).__doc__ or ""
        assert "et al." in doc and "Example" in doc, method
