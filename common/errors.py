"""The project's own exception types: the only ones whose message the CLI shows as is (no traceback)."""


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, an offline download.

    The message says what was wrong and what to do. The CLI prints it and exits non-zero.
    """


class ConfigError(UserError, ValueError):
    """An argument or setting out of range, or an unknown name.

    A UserError for the CLI, and a ValueError for library callers that pass bad arguments.
    """


def unknown_name(kind: str, name: str, valid) -> ConfigError:
    """A ConfigError for a registry miss that lists the valid names."""
    names = ", ".join(sorted(valid))
    return ConfigError(f"unknown {kind} '{name}'; valid {kind}s: {names}")
