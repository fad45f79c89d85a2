"""Errors for bad user input: each names the setting or file, what is wrong and how to fix it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class SftError(Exception):
    """Base class: a problem in the user's configuration or data, reported without a traceback."""


class ConfigError(SftError, ValueError):
    """A configuration value is invalid (names the setting and the fix)."""


class DataError(SftError, ValueError):
    """A data file or split is invalid (names the file, line and the fix)."""


class TrainingDiverged(SftError, RuntimeError):
    """The training loss became NaN or infinite (names the step and what to lower)."""


def command_line(main: Callable[..., int]) -> Callable[..., int]:
    """A command-line ``main(argv) -> exit status``: an :class:`SftError` is printed as ``error: ...`` (no
    traceback) and exits with status 2."""
    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except SftError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run
