"""Errors a user can fix. The CLI prints their message (no traceback) and exits non-zero."""


class UserError(Exception):
    """A mistake in the input (config, paths, data) with a message that says what to do."""


class DatasetNotFound(UserError):
    pass


class ConfigError(UserError):
    pass
