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


def missing_model_fix(path) -> str:
    """The fix for a model folder that does not exist: the real models ``intervene testbed fetch-gguf``
    caches in ``.cache/real/`` are fetched with it; anything else needs an existing model."""
    from pathlib import Path

    parts = Path(str(path)).parts
    if any(a == ".cache" and b == "real" for a, b in zip(parts, parts[1:])):
        return "fetch it with `intervene testbed fetch-gguf` (caches the GGUF real models in .cache/real/)"
    return "give an existing model folder (with config.json), a .gguf file, a hub id or testbed:planted"
