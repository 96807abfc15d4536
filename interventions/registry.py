"""A named registry: the one place an extension point (intervention kinds, target selectors) lists its members.

Modelled on lm-evaluation-harness's ``lm_eval/api/registry.py``: members register themselves
with a decorator, a second member under the same name is an error, a lookup by a misspelt
name says which name was probably meant, and the registry stays open after import, so a kind
registered in a notebook is usable in the next spec that is validated.

A registry may be given a ``load`` callable that imports the built-in members; it runs on the
first read, so importing the registry itself stays cheap and cycle-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from difflib import get_close_matches
from typing import Generic, TypeVar

T = TypeVar("T")


def closest(word: object, options) -> str | None:
    """The option ``word`` was probably meant to be (close spelling or prefix), or None."""
    if not isinstance(word, str) or not word:
        return None
    options = list(options)
    match = get_close_matches(word, options, n=1, cutoff=0.6)
    if not match:
        low = word.lower()
        match = [o for o in options if o.lower().startswith(low) or (len(low) >= 3 and low in o.lower())][:1]
    return match[0] if match and match[0] != word else None


class Registry(Mapping[str, T], Generic[T]):
    """Name -> member, in registration order (error messages list members in this order).

    A :class:`~collections.abc.Mapping`: ``name in registry``, ``registry[name]``, ``list(registry)``.
    """

    def __init__(self, what: str, *, load: Callable[[], object] | None = None):
        """
        Args:
            what: what a member is, for messages ("intervention kind").
            load: imports the built-in members (run once, on first read).
        """
        self.what = what
        self._members: dict[str, T] = {}
        self._load = load
        self._version = 0

    def _loaded(self) -> dict[str, T]:
        if self._load is not None:
            load, self._load = self._load, None
            load()
        return self._members

    def register(self, name: str, member: T) -> T:
        """Add ``member`` under ``name``; a name registered twice is an error (no silent override)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty name, got {name!r}")
        members = self._loaded() if self._load is not None and name not in self._members else self._members
        if name in members and members[name] is not member:
            raise ValueError(f"{self.what} {name!r} is already registered (by {_origin(members[name])}); "
                             "pick another name, or unregister the old one first")
        members[name] = member
        self._version += 1
        return member

    def unregister(self, name: str) -> T:
        """Remove and return a member (for tests and notebooks that redefine one)."""
        member = self._loaded().pop(name)
        self._version += 1
        return member

    def get_or_raise(self, name: str) -> T:
        """The member called ``name``; a KeyError naming the known members and the likely one otherwise."""
        members = self._loaded()
        if name in members:
            return members[name]
        guess = closest(name, members)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise KeyError(f"{name!r} is not a known {self.what} — use one of {', '.join(members)}{hint}")

    @property
    def version(self) -> int:
        """Bumped on every change (lets callers cache what they build from the members)."""
        self._loaded()
        return self._version

    def __getitem__(self, name: str) -> T:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._loaded()))

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._loaded())})"


def _origin(member: object) -> str:
    return f"{getattr(member, '__module__', '?')}.{getattr(member, '__qualname__', type(member).__name__)}"
