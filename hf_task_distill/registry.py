"""Named extensions of one kind, registered by a plugin or the package: student families, export
formats, task types (stages keep their own registry, which also orders them; losses are builders by
name in :mod:`hf_task_distill.losses`).

One :class:`Registry` per kind refuses what would break later (not an instance of the kind's base
class, no name, a method of the contract left unimplemented, a name taken) with the reason, and keeps
the package's own entries registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Registry"]


class Registry:
    """Entries of one kind by name, in registration order.

    Args:
        kind: how messages name an entry (``"student family"``).
        base: the class every entry is an instance of.
        required: the methods of ``base`` an entry must override.
        unregister_hint: the call that removes an entry, for the "already registered" message
            (``"unregister_student_family"``).
        listed: the names as messages list them (default: registration order).
    """

    def __init__(
        self,
        kind: str,
        base: type,
        required: tuple[str, ...],
        unregister_hint: str,
        listed: Callable[[list[str]], list[str]] | None = None,
    ):
        self.kind, self.base, self.required = kind, base, required
        self.unregister_hint = unregister_hint
        self._listed = listed or list
        self._entries: dict[str, Any] = {}
        self._builtin: set[str] = set()

    def register(self, entry: Any, *, builtin: bool = False) -> Any:
        """Register ``entry`` (an instance, or a class with a no-argument constructor) under its ``name``.

        Returns:
            ``entry`` as given (so that this works as a class decorator).

        Raises:
            TypeError: not an instance of the base class, or a required method is not implemented.
            ValueError: no ``name``, or the name is taken.
        """
        instance = entry() if isinstance(entry, type) else entry
        cls = type(instance)
        if not isinstance(instance, self.base):
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise TypeError(f"{article} {self.kind} subclasses {self.base.__name__}; got {cls.__name__}")
        name = getattr(instance, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{cls.__name__} has no name: set the class attribute `name`")
        missing = [m for m in self.required if getattr(cls, m) is getattr(self.base, m)]
        if missing:
            raise TypeError(f"{cls.__name__} does not implement {' and '.join(f'{m}()' for m in missing)}")
        if name in self._entries:
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise ValueError(
                f"{article} {self.kind} named '{name}' is already registered "
                f"({type(self._entries[name]).__name__}); {self.unregister_hint}('{name}') first"
            )
        self._entries[name] = instance
        if builtin:
            self._builtin.add(name)
        return entry

    def unregister(self, name: str) -> Any:
        """Remove the entry registered as ``name`` and return it.

        Raises:
            ValueError: ``name`` is not registered, or is one of the package's own.
        """
        if name in self._builtin:
            raise ValueError(f"'{name}' is a built-in {self.kind} and stays registered")
        return self._entries.pop(self.get(name).name)

    def get(self, name: str) -> Any:
        """The entry registered as ``name``.

        Raises:
            ValueError: none is (the message lists the registered names).
        """
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """The registered names, in the order :attr:`listed` gives them."""
        return self._listed(list(self._entries))

    def entries(self, *, newest_first: bool = False, custom_only: bool = False) -> list[Any]:
        """The registered entries in registration order (or newest first); ``custom_only`` leaves out
        the package's own."""
        names = [n for n in self._entries if not (custom_only and n in self._builtin)]
        return [self._entries[n] for n in (reversed(names) if newest_first else names)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries
