"""Records are frozen dataclasses whose ``__init__`` stores fields by slot (records.py).

The faster ``__init__`` must be indistinguishable from the one ``dataclass`` writes: the same
parameters, the same stored values, and the record as frozen, comparable, hashable by its
values and picklable as before.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import typing
import uuid
from datetime import UTC, datetime

import pytest

from dualdb import records
from dualdb.records import Generation, Project, Record, Shot, ShotGeneration, Task, User

RECORDS: list[type[Record]] = [User, Project, Shot, Generation, ShotGeneration, Task]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_init_takes_the_fields_in_order(cls: type[Record]) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    parameters = inspect.signature(cls).parameters
    assert list(parameters) == names
    assert all(
        p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in parameters.values()
    )
    assert cls.__init__.__qualname__ == f"{cls.__name__}.__init__"
    by_position = cls(*range(len(names)))
    by_name = cls(**{name: i for i, name in enumerate(names)})
    assert by_position == by_name and by_position.as_dict() == {n: i for i, n in enumerate(names)}
    with pytest.raises(TypeError):
        cls(*range(len(names) - 1))  # a field missing
    with pytest.raises(TypeError):
        cls(*range(len(names) + 1))  # one too many


def test_a_record_stays_frozen_and_keeps_its_value_semantics() -> None:
    now = datetime.now(UTC)
    task = Task(
        uuid.uuid4(), uuid.uuid4(), "render", {"a": 1}, "Queued", [], None, now,
        None, None, 0, None, None, None, None,
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.status = "Complete"  # type: ignore[misc]
    assert not hasattr(task, "__dict__")  # still slots only
    assert pickle.loads(pickle.dumps(task)) == task
    assert copy.deepcopy(task) == task
    changed = dataclasses.replace(task, status="Complete")
    assert (changed.status, changed.id, task.status) == ("Complete", task.id, "Queued")
    user = User(uuid.uuid4(), None, now)
    assert hash(user) == hash(User(user.id, None, now))
    assert repr(user).startswith("User(id=UUID(")


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_the_init_keeps_its_type_hints(cls: type[Record]) -> None:
    hints = typing.get_type_hints(cls.__init__)  # resolved in the records' module
    assert hints == {**typing.get_type_hints(cls), "return": type(None)}
    assert inspect.signature(cls, eval_str=True).parameters["id"].annotation is uuid.UUID


def test_only_records_of_plain_positional_fields_get_the_init() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithDefault(Record):
        a: int
        b: int = 0

    @dataclasses.dataclass(frozen=True, slots=True)
    class NotInInit(Record):
        a: int
        b: int = dataclasses.field(init=False, default=0)

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly(Record):
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit(Record):
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (WithDefault, NotInInit, KeywordOnly, PostInit):
        with pytest.raises(TypeError, match="plain positional fields"):
            records._stored_by_slot(cls)
