"""Error types of the data pipeline: every message names the file (and line or key) and the bad value."""

from ...errors import DataError

__all__ = ["CorruptIndexError", "DataError"]


class CorruptIndexError(DataError):
    """A Megatron .idx/.bin pair that does not follow the MMIDIDX layout (see indexed.py)."""
