"""The :data:`UNSET` marker: "leave this field alone" in partial updates (None means NULL)."""

from __future__ import annotations

from enum import Enum
from typing import Final, Literal


class Unset(Enum):
    """Type of :data:`UNSET`."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Default of every optional ``update`` argument: the field is not changed.
UNSET: Final[Literal[Unset.UNSET]] = Unset.UNSET
