"""The schemas that the migrations create on SQLite and on Postgres are equivalent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dualdb.config import resolve
from dualdb.engine import create_engine

pytestmark = pytest.mark.postgres

# Each dialect's reflected type, mapped to the logical type of DESIGN.md.
LOGICAL = {
    ("sqlite", "TEXT"): "text-ish",
    ("sqlite", "INTEGER"): "integer",
    ("postgresql", "TEXT"): "text",
    ("postgresql", "UUID"): "uuid",
    ("postgresql", "UUID[]"): "uuid[]",
    ("postgresql", "JSONB"): "jsonb",
    ("postgresql", "TIMESTAMP WITH TIME ZONE"): "timestamptz",
    ("postgresql", "INTEGER"): "integer",
}
# On SQLite uuid, uuid[], jsonb and timestamptz are all TEXT: they match any of these.
SQLITE_TEXT_MATCHES = {"text", "uuid", "uuid[]", "jsonb", "timestamptz"}
POSTGRES_ONLY_INDEXES = {"ix_tasks_dependant_on_gin"}


def describe(url: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(resolve(url))
    try:
        insp = sa.inspect(engine)
        dialect = engine.dialect
        out: dict[str, dict[str, Any]] = {}
        for table in sorted(insp.get_table_names()):
            if table == "alembic_version":
                continue
            out[table] = {
                "columns": {
                    c["name"]: (
                        LOGICAL[(dialect.name, dialect.type_compiler_instance.process(c["type"]))],
                        c["nullable"],
                    )
                    for c in insp.get_columns(table)
                },
                "pk": tuple(insp.get_pk_constraint(table)["constrained_columns"]),
                "fks": sorted(
                    (
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                        (fk.get("options") or {}).get("ondelete", "").upper(),
                    )
                    for fk in insp.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(table)
                    if i["name"] not in POSTGRES_ONLY_INDEXES
                ),
                "checks": sorted(str(c["name"]) for c in insp.get_check_constraints(table)),
            }
        return out
    finally:
        engine.dispose()


def test_sqlite_and_postgres_schemas_are_equivalent(
    sqlite_template: Path, pg_template: str | None, pg_server: Any
) -> None:
    if pg_template is None:
        from tests.conftest import _require_pg

        _require_pg(pg_server)
    lite = describe(f"sqlite:///{sqlite_template}")
    pg = describe(pg_server.url_for(pg_template))
    assert lite.keys() == pg.keys()
    for table in pg:
        lcols, pcols = lite[table]["columns"], pg[table]["columns"]
        assert list(lcols) == list(pcols), f"{table}: column names/order differ"
        for name, (ptype, pnull) in pcols.items():
            ltype, lnull = lcols[name]
            assert lnull == pnull, f"{table}.{name}: nullability differs"
            if ltype == "text-ish":
                assert ptype in SQLITE_TEXT_MATCHES, f"{table}.{name}: {ptype} vs TEXT"
            else:
                assert ltype == ptype, f"{table}.{name}: {ltype} vs {ptype}"
        for key in ("pk", "fks", "indexes", "checks"):
            assert lite[table][key] == pg[table][key], f"{table}: {key} differ"
    assert pg["tasks"]["checks"] == ["ck_tasks_status"]
    assert all(fk[3] == "CASCADE" for t in pg.values() for fk in t["fks"])
