"""The SQLite triggers that migrations 0014 and 0015 replace: each starts from the text 0006
created (frozen in the migration, so that its downgrade gives it back exactly) and changes only
what its docstring says.  A frozen text that drifted from 0006's would leave a ``str.replace``
with nothing to replace, silently."""

from __future__ import annotations

import difflib

from tests.integration.integrity_support import migration as _migration


def _added(before: str, after: str) -> list[str]:
    """The lines ``after`` has that ``before`` has not (each changed line counts once)."""
    diff = difflib.ndiff(before.strip("\n").splitlines(), after.strip("\n").splitlines())
    return [line[2:] for line in diff if line.startswith("+ ")]


def test_0014_starts_from_0006_and_keeps_two_status_tests_off_the_index() -> None:
    m0006 = _migration("0006_queue_rules_in_the_database")
    m0014 = _migration("0014_sqlite_dependency_checks_by_primary_key")
    for name, frozen in m0014.BEFORE.items():
        assert frozen.strip("\n") == m0006.SQLITE_TRIGGERS[name].strip("\n"), name
        added = _added(frozen, m0014.AFTER[name])
        assert added == ["                    WHERE +d.status IN ('Failed', 'Cancelled'));"], name


def test_0015_starts_from_0006_and_drives_the_cascade_from_the_dependents() -> None:
    m0006 = _migration("0006_queue_rules_in_the_database")
    m0015 = _migration("0015_sqlite_cancel_cascade_by_key")
    before, after = m0015.BEFORE, m0015.AFTER
    assert before.strip("\n") == m0006.SQLITE_TRIGGERS["tasks_after_status"].strip("\n")
    added = _added(before, after)
    # The three status tests, each with its "+", and the guard in the walk's first step.
    assert added[:3] == [
        "       AND (+status IN ('Pending', 'Queued', 'In Progress') OR (+status = 'Cancelled'"
        " AND error IS NULL))",
        "                      AND (+t0.status IN ('Pending', 'Queued', 'In Progress')",
        "                           OR (+t0.status = 'Cancelled' AND t0.error IS NULL)))",
    ]
    guard = "AND NEW.status IN ('Failed', 'Cancelled') AND EXISTS (SELECT 1 FROM task_dependencies"
    assert added[3].lstrip().startswith(guard)
    # The rest of the guard, as in the update's own WHERE.
    assert added[4:] == ["                    WHERE e0.dependency_id = NEW.id", *added[1:3]]
    # Nothing else: the lines before the cascade are 0006's, character for character.
    cascade = "-- Failed or Cancelled: every unfinished dependent"
    assert after.split(cascade)[0] == before.split(cascade)[0]
