"""The examples in the package's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import mergekit_like

ROOT = Path(mergekit_like.__file__).parent
MODULES = sorted(
    "mergekit_like." + ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in ROOT.rglob("*.py") if ">>> " in p.read_text() and p.name != "__main__.py")


def test_examples_are_found():
    assert "mergekit_like.methods.pieces" in MODULES and len(MODULES) >= 10


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
