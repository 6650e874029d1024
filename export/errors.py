"""The workstation side's user-facing error (printed as one line by the CLI, exit 2)."""

from feredge.edge.errors import FeredgeError


class ExportError(FeredgeError):
    """Bad input to export / parity: unreadable model, mismatched labels, bad data."""


class NoTestPart(ExportError):
    """The data source has no test part (a plain folder, arrays without x_test): callers may fall
    back to other faces. Any other failure to read the test part is an error, never a fallback."""
