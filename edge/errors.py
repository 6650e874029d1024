"""Error types that carry a message meant for the user.

The CLI prints any :class:`FeredgeError` as one line and exits with status 2; every other
exception is a bug and is allowed to show its traceback.
"""

from __future__ import annotations


class FeredgeError(Exception):
    """Base of all user-facing errors (bad input, missing files, unusable models)."""

    exit_code = 2


class EdgeError(FeredgeError):
    """A problem on the device side: model, contract, camera, config."""


class ContractError(EdgeError):
    """A model contract is missing, malformed or does not match its artifact."""
