"""The project's error types: what a user got wrong, as opposed to a bug.

`UserError` (a ValueError, so library callers that catch ValueError keep
working) is raised where a user's input is at fault: a path that holds no
store or bundle, a flag out of range, a spec that does not fit. The command
line prints these as one line and exits 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user's input is wrong; the message says what was expected and what to do."""


def choose(table: dict, key, what: str):
    """table[key], or a UserError naming `what` and the keys to choose from."""
    if key not in table:
        raise UserError(f"unknown {what} {key!r}; choose one of {', '.join(map(str, table))}")
    return table[key]


__all__ = ["UserError", "choose"]
