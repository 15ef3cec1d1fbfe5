"""Exceptions a user can cause and fix; importable without PyTorch."""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user asked for; the CLI prints it as one line, exit code 2."""


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence as written
        return str(self.args[0])
