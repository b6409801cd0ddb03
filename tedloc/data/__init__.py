"""Dataset readers: every format yields the same :class:`~tedloc.data.records.Record`."""

from tedloc.data.records import Dataset, Record

__all__ = ["Dataset", "Record"]
