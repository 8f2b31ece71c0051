"""Guards: the data audit checks what the triggers enforce, and every rule is documented."""

from __future__ import annotations

from pathlib import Path

from dualdb import integrity, schema, types
from tests.integration.integrity_support import migration_0006

QUEUE_DOC = Path(__file__).resolve().parents[2] / "docs" / "queue.md"


def test_the_audit_uses_the_patterns_the_triggers_enforce() -> None:
    m = migration_0006()
    fix = (
        "Fix: dualdb.types (UUID_GLOB, TIMESTAMP_GLOB, MAX_JSON_NUMBER) and the tasks' Timestamp "
        "columns must describe what migration 0006's triggers check. A later migration that "
        "changes the triggers must change these too, so `dualdb check --data` keeps auditing "
        "existing rows against the rules new writes get."
    )
    assert (types.UUID_GLOB, types.TIMESTAMP_GLOB) == (m.UUID_GLOB, m.TIME_GLOB), fix
    assert float(m.MAX_DOUBLE) == types.MAX_JSON_NUMBER, fix
    assert integrity._TASK_TIMES == m.TIME_COLUMNS, fix
    assert {name for _, name in m.TRIGGERS} == {
        name for names in schema.TRIGGERS.values() for name in names
    }, "Fix: dualdb.schema.TRIGGERS must list every trigger the migrations create."


def test_every_rule_is_documented() -> None:
    text = QUEUE_DOC.read_text(encoding="utf-8")
    missing = [name for name in integrity.rule_names() if f"`{name}`" not in text]
    assert not missing, (
        f"docs/queue.md does not describe the data rules {missing}: add a row for each to the "
        "table in 'Auditing and repairing the data'."
    )
