"""Errors a user can fix. The CLI prints their message (no traceback) and exits non-zero."""
import errno


class UserError(Exception):
    """A mistake in the input (config, paths, data) with a message that says what to do."""


class DatasetNotFound(UserError):
    pass


class ConfigError(UserError):
    pass


class StorageError(Exception):
    """The run folder's file system refused a write (no space left, quota, read-only): not bad input
    (exit 1), but said in one ``error:`` line naming the file and what to do. The run's summary says
    ``failed`` and the folder keeps what it had, so the run can be resumed once there is room."""


# a write the file system refused (no space, quota, read-only, file too large): said as such (run.py), the
# summary not left "running", and never taken for a probe's own failure (probes/base.py)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
