"""User-facing errors.

Every problem a user can fix (a bad spec field, a missing file, an unsupported architecture)
is raised as :class:`UserError` with a one-line message that names the field and the fix.
The CLI prints it as ``error: <message>`` and exits with code 2; nothing else is printed.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, reported as one line before any expensive work."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class SpecError(UserError):
    """One or more problems in a spec; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
