"""The project's error types: a bad input, named in the message with what was expected.

Every error a user can cause (a bad file, key, value or layout) is a `MinibridgeError`; the command
lines (`minibridge.cli.run_main`) print such an error, and OS errors, as one line and exit with code 2.
Anything else is a bug and keeps its traceback. Each class also derives from the builtin error it
refines (ValueError, KeyError, RuntimeError), so `except ValueError` in user code keeps working.

This module imports nothing from minibridge: every package may use it.
"""

from __future__ import annotations

import difflib


class MinibridgeError(Exception):
    """A bad input: the message names the file, key or value and what was expected."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument; ours is the message itself
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(MinibridgeError, ValueError):
    """A bad configuration value (a recipe override, a config.json key, an argument)."""


class UnsupportedModelError(ConfigError):
    """An architecture or model feature minibridge does not implement."""


class LayoutError(ConfigError):
    """A parallel layout that does not fit the model or the world size."""


class CheckpointError(MinibridgeError, ValueError):
    """A checkpoint or model folder that cannot be used: corrupt, unsafe, incomplete or of another model."""


class CorruptCheckpointError(CheckpointError):
    """A file whose bytes do not follow its format (safetensors, DCP metadata, JSON side files)."""


class UnsafeCheckpointError(CheckpointError):
    """A file that tries to do more than hold data: pickled code, paths leading outside its folder."""


class MissingTensorError(CheckpointError, KeyError):
    """A tensor or parameter that the model needs and the checkpoint lacks (or the reverse)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint belongs to another model or run than the one it is loaded into."""


class DataError(MinibridgeError, ValueError):
    """Bad data or bad data arguments: an unreadable row, an empty dataset, mismatched blend weights..."""


class RunLockedError(MinibridgeError, RuntimeError):
    """Another live process is training into the same checkpoint folder."""


class TrainingDivergedError(MinibridgeError, RuntimeError):
    """The loss or the gradient norm stopped being finite; the run cannot recover on its own."""


def reject_unknown_keys(where: str, data, valid) -> None:
    """ConfigError for the first key of `data` not in `valid`, named as `where + key`, with the closest
    valid keys (or all of them) in the message."""
    valid = list(valid)
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f"; closest valid keys: {', '.join(close)}" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown key '{where}{key}'{hint}")
