"""The resolved configuration of every recipe and of command lines using each part of the configuration path
is byte-identical to the golden files (make_goldens.py writes them; a redesign of the configuration code
must keep them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("make_goldens", Path(__file__).with_name("make_goldens.py"))
goldens = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(goldens)


@pytest.fixture(scope="module")
def scratch():
    with goldens.environment() as folder:
        yield folder


def test_every_golden_is_listed():
    stored = sorted(path.stem for path in goldens.GOLDEN.glob("*.txt"))
    assert stored == sorted(goldens.names())


@pytest.mark.parametrize("name", goldens.names())
def test_golden(name, scratch):
    assert goldens.render(name, scratch) == (goldens.GOLDEN / f"{name}.txt").read_text()
