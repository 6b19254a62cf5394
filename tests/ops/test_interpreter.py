"""ds3kit.ops.interpreter.interpreter_on: the one check of whether Triton's CPU interpreter is on."""

import pytest

from ds3kit.ops.interpreter import interpreter_on


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False)])
def test_follows_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_on() is expected


def test_off_without_the_variable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert interpreter_on() is False


def test_reads_the_variable_as_triton_does(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "true")  # triton.jit interprets under "true" too
    assert interpreter_on() is True
