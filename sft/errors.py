"""Errors for bad user input: each names the setting or file, what is wrong and how to fix it."""


class SftError(Exception):
    """Base class: a problem in the user's configuration or data, reported without a traceback."""


class ConfigError(SftError, ValueError):
    """A configuration value is invalid (names the setting and the fix)."""


class DataError(SftError, ValueError):
    """A data file or split is invalid (names the file, line and the fix)."""


class TrainingDiverged(SftError, RuntimeError):
    """The training loss became NaN or infinite (names the step and what to lower)."""
