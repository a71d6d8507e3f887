"""File-backed persistence for library_api: JSON collection files, one lock, one change journal.

Nothing here knows about HTTP or Flask. The application talks to :class:`JsonStore` through the
interface described in :mod:`storage.base`.
"""

from storage.base import Change, Snapshot, Store, Txn
from storage.errors import (
    CommitUnknownError,
    ConflictError,
    CorruptFileError,
    JournalTruncatedError,
    LockTimeoutError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    StoreUnavailableError,
)
from storage.jsonfile import JsonStore

__all__ = [
    "CommitUnknownError",
    "Change",
    "ConflictError",
    "CorruptFileError",
    "JournalTruncatedError",
    "JsonStore",
    "LockTimeoutError",
    "NotFoundError",
    "PreconditionFailedError",
    "Snapshot",
    "StorageError",
    "StoreUnavailableError",
    "Store",
    "Txn",
]
