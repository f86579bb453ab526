"""The package's errors: everything a user can fix is a ``DinoError``, and the ``dino``
command prints its message as one line and exits with its ``exit_code``: 2 for wrong input
or configuration, 1 for a fault met while working (a disk that fills).

- ``ConfigError``: an option has a wrong value; the message names the field.
- ``DataError``: images or annotation files are missing, unreadable or malformed; the
  message names the file.
- ``CheckpointError``: a checkpoint cannot be read or does not fit the model.
- ``NonFiniteLossError``: training stopped on a NaN or infinite loss (the last checkpoint
  is kept); the message says what to change.
- ``NonFiniteFeaturesError``: a backbone gave NaN or infinite features; the message names
  the image.
- ``WriteError`` (exit 1): writing a file failed midway; the message names the file, and
  what the file held before is intact.
- ``LaunchError`` (exit 1): the processes of a distributed launch did not all meet.
"""

from __future__ import annotations


class DinoError(Exception):
    """An error the user can fix; its message says what and where, on one line."""

    exit_code = 2  # of the dino command: wrong input or configuration


class ConfigError(DinoError, ValueError):
    """A configuration value is wrong; the message names the field and what was expected."""


class DataError(DinoError):
    """Input data (images, ground truth) is missing, unreadable or malformed."""


class CheckpointError(DinoError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message says which and why."""


class NonFiniteLossError(DinoError, RuntimeError):
    """The loss became NaN or infinite; training stopped and the last checkpoint was kept."""


class StoppedBySignal(Exception):
    """A scheduler's signal (SIGTERM, SIGUSR1) stopped training after a checkpoint; the
    ``dino`` command says where it stopped and exits with 128 + ``signum``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class NonFiniteFeaturesError(DinoError, RuntimeError):
    """A backbone's features of an image are NaN or infinite; the message names the image."""


class WriteError(DinoError):
    """Writing a file failed midway (disk full, quota, I/O error); the previous file is intact."""

    exit_code = 1  # a fault met while working, not wrong input


class LaunchError(DinoError, RuntimeError):
    """The processes of a distributed launch did not all meet within the rendezvous timeout."""

    exit_code = 1  # a process that did not come (crashed, never started, unreachable)
