"""The one exception type whose message is shown to the user as is (no traceback)."""


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, an offline download.

    The message says what was wrong and what to do. The CLI prints it and exits non-zero.
    """


def unknown_name(kind: str, name: str, valid) -> ValueError:
    """A ValueError for a registry miss that lists the valid names."""
    names = ", ".join(sorted(valid))
    return ValueError(f"unknown {kind} '{name}'; valid {kind}s: {names}")
