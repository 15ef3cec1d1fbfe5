"""Exceptions a user can cause and fix; importable without PyTorch.

Every one derives from `UsageError`: the CLI prints those as one line with exit code 2 and
treats anything else as a bug (traceback and how to report it). Each also derives from the
built-in exception Python code would expect (`ValueError`, `KeyError`, `FileNotFoundError`,
`ImportError`), so library callers catch them as before.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["UsageError", "UnknownModelError", "SettingError", "DataError", "MissingExtraError", "require_extra"]


class UsageError(Exception):
    """A mistake in what the user asked for; the CLI prints it as one line, exit code 2."""


class UnknownModelError(UsageError, KeyError):
    """Raised for a model name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence as written
        return str(self.args[0])


class SettingError(UsageError, ValueError):
    """A value the user gave (an argument, a setting, a weight file) that cannot be used as given."""


class DataError(UsageError, ValueError):
    """Data that cannot be used: no images, no class folders, classes the model does not know."""


class MissingExtraError(UsageError, ImportError):
    """An optional dependency of one feature is not installed; the message names the pip install."""


def require_extra(module: str, extra: str, feature: str) -> ModuleType:
    """`module` imported, or a MissingExtraError naming `pip install 'visionzoo[extra]'` for `feature`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        raise MissingExtraError(f"{feature} needs {missing}, which is not installed: "
                                f"pip install 'visionzoo[{extra}]'") from error
