"""Command lines run on spawned gloo ranks by the evaluation tests."""

from __future__ import annotations


def run_commands(module: str, commands: list[list[str]]) -> None:
    """`python -m minibridge.<module>` with each argument list in turn, inside one spawned world."""
    import importlib

    main = importlib.import_module(f"minibridge.{module}").main
    for argv in commands:
        code = main(argv)
        if code != 0:
            raise AssertionError(f"minibridge.{module} {' '.join(argv)} exited with {code}")
