"""`Record`: small value classes without `typing` or `dataclasses`.

A one-job run spends more time importing than running, so the modules on its
path avoid the imports that cost most: `dataclasses` (it imports `inspect`)
and `typing.NamedTuple`. A record names its fields in ``__slots__``, writes
its own typed ``__init__``, and gets equality, hashing, repr and `replace`
from here.

Records are values: code never assigns to a record's field after building it,
it makes a changed copy with `replace`, so a record can be a dict key or a set
member. That is a rule, not a check (frozen dataclasses check it with a
``__setattr__`` that every ``__init__`` then has to go around).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Tuple, TypeVar

    R = TypeVar("R", bound="Record")


class Record:
    __slots__: Tuple[str, ...] = ()

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def replace(self: R, **changes: Any) -> R:
        """A copy with some fields changed."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return type(self)(**values)
