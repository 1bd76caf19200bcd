"""The one exception the data layer raises for bad input, so callers (the CLI) can report it cleanly."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset folder or file that cannot be used as given; the message names the path or image."""
