"""The runnable examples in the method files' docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import xcam.attributions
import xcam.methods

METHOD_MODULES = sorted(
    f"{package.__name__}.{m.name}"
    for package in (xcam.methods, xcam.attributions)
    for m in pkgutil.iter_modules(package.__path__)
    if m.name not in ("base",)
)


@pytest.mark.parametrize("name", METHOD_MODULES)
def test_method_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0


def test_every_method_file_names_its_paper() -> None:
    for method in xcam.list_methods():
        doc = importlib.import_module(xcam.get_method(method).__module__).__doc__ or ""
        assert ("et al." in doc or " & " in doc) and "Example" in doc, method
        assert " = " in doc, f"{method}: its docstring has no formula"


@pytest.mark.parametrize("name", ["xcam.core.targets", "xcam.core.tokens"])
def test_core_docstring_examples(name: str) -> None:
    """The targets' and token layouts' examples (RegionTarget, BoxTarget, Layout) hold."""
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0 and result.failed == 0
