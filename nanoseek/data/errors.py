"""The one exception the data layer raises for problems a user can fix (bad path, corrupt file, ...)."""

from __future__ import annotations

from nanoseek.cli import UserError


class DataError(UserError, ValueError):
    """Bad or missing input data; the message names the file and the fix. The CLI prints it and exits 2."""
