"""The storage exceptions: one small hierarchy, mapped to HTTP in one place by the application."""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base class of every error raised by the storage package."""


class NotFoundError(StorageError):
    """A record that the caller needs does not exist (HTTP 404)."""


class ConflictError(StorageError):
    """The change would break a rule of the stored data, such as a unique key (HTTP 409)."""


class PreconditionFailedError(StorageError):
    """The record changed since the caller read it (HTTP 412)."""


class LockTimeoutError(StorageError):
    """The data directory stayed locked by another writer for too long (HTTP 503)."""


class JournalTruncatedError(StorageError):
    """The journal no longer holds changes that old; the caller must reload (HTTP 410)."""


class CorruptFileError(StorageError):
    """A data file is not what the server wrote; it is left untouched and nothing is written.

    :param path: the file that could not be read.
    :param line: 1-based line of the problem, when known.
    :param column: 1-based column of the problem, when known.
    :param reason: what is wrong, in a few words.
    """

    def __init__(self, path: Path | str, line: int | None, column: int | None, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.column = column
        self.reason = reason
        where = f" at line {line}" if line is not None else ""
        if line is not None and column is not None:
            where += f", column {column}"
        super().__init__(
            f"{self.path}: {reason}{where}. Nothing was written; fix the file or restore it from a backup."
        )


class StoreUnavailableError(StorageError):
    """Writes are refused for now: a data file is missing or invalid, or the journal is being
    repaired (HTTP 503). The message names the file and what to do."""


class CommitUnknownError(StorageError):
    """A change was written but the disk reported an error while syncing it: whether it was kept
    is unknown, and the process takes no more writes (HTTP 503; never reported as "not saved")."""


class JournalLostError(StoreUnavailableError):
    """The journal is missing while changes past the collection files were committed: a worker that
    holds them must write them out before the journal may start again."""
