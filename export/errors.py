"""The workstation side's user-facing error (printed as one line by the CLI, exit 2)."""

from edge.errors import FeredgeError


class ExportError(FeredgeError):
    """Bad input to export / parity: unreadable model, mismatched labels, bad data."""
