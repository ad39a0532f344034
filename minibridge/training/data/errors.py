"""Error types of the data pipeline: every message names the file (and line or key) and the bad value."""


class DataError(ValueError):
    """Bad data or bad data arguments: an unreadable row, an empty dataset, mismatched blend weights..."""


class CorruptIndexError(DataError):
    """A Megatron .idx/.bin pair that does not follow the MMIDIDX layout (see indexed.py)."""
