"""``dualdb.dump`` / ``dualdb.load``: a portable archive, checked before anything is written."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import dualdb
from dualdb import migrations
from dualdb.errors import Conflict, InvalidInput, SchemaOutOfDate
from tests.integration.dal_support import snapshot
from tests.integration.transfer_support import (
    DIRECTIONS,
    MakeDb,
    content,
    fresh,
    populate,
    rename_project,
)

__all__ = ["fresh"]


def _manifest(path: Path) -> dict[str, object]:
    with zipfile.ZipFile(path) as zf:
        data: dict[str, object] = json.loads(zf.read("manifest.json"))
    return data


def _checksums(path: Path) -> dict[str, tuple[int, str]]:
    tables = _manifest(path)["tables"]
    assert isinstance(tables, list)
    return {t["name"]: (t["rows"], t["checksum"]) for t in tables}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_dump_loads_into_either_backend_with_the_same_rows(
    direction: tuple[str, str], fresh: MakeDb, tmp_path: Path
) -> None:
    with dualdb.connect(fresh(direction[0])) as src, dualdb.connect(fresh(direction[1])) as dst:
        populate(src)
        archive = tmp_path / "all.zip"
        written = dualdb.dump(src, archive)
        assert written.rows == sum(src.row_counts().values())
        result = dualdb.load(dst, archive, verify=True, allow_remote=True)
        assert result.verified
        assert content(dst) == content(src)
        # The target dumps to the same content, checksum for checksum.
        again = tmp_path / "again.zip"
        dualdb.dump(dst, again)
        assert _checksums(again) == _checksums(archive)
        # Loading twice changes nothing (a rerun after an interruption finishes the job).
        assert dualdb.load(dst, archive, verify=True, allow_remote=True).inserted == 0


def _rewrite(src: Path, dst: Path, member: str, change: object) -> None:
    """A copy of the archive ``src`` with ``member``'s bytes passed through ``change``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == member:
                data = change(data)  # type: ignore[operator]
            zout.writestr(item, data)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_corrupt_dump_is_refused_and_nothing_is_written(
    backend: str, fresh: MakeDb, tmp_path: Path
) -> None:
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh(backend)) as dst:
        populate(src)
        good = tmp_path / "good.zip"
        dualdb.dump(src, good)
        before = snapshot(dst)

        flipped = tmp_path / "flipped.zip"  # one character of one row changed
        _rewrite(good, flipped, "tables/tasks.jsonl", lambda b: b.replace(b"Queued", b"Pendin", 1))
        with pytest.raises(InvalidInput, match=r"table tasks.*corrupt"):
            dualdb.load(dst, flipped, allow_remote=True)

        # A row missing: the count and the bytes no longer match the manifest.
        short = tmp_path / "short.zip"
        _rewrite(good, short, "tables/shots.jsonl", lambda b: b.split(b"\n", 1)[1])
        with pytest.raises(InvalidInput, match="table shots"):
            dualdb.load(dst, short, allow_remote=True)

        older = tmp_path / "older.zip"
        head = migrations.head_revision()
        assert head is not None and head > "0008"
        _rewrite(
            good,
            older,
            "manifest.json",
            lambda b: b.replace(f'"revision": "{head}"'.encode(), b'"revision": "0008"'),
        )
        with pytest.raises(SchemaOutOfDate, match="revision '0008'"):
            dualdb.load(dst, older, allow_remote=True)

        not_zip = tmp_path / "not.zip"
        not_zip.write_text("hello")
        with pytest.raises(InvalidInput, match="not a zip"):
            dualdb.load(dst, not_zip, allow_remote=True)

        truncated = tmp_path / "truncated.zip"
        truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(InvalidInput):
            dualdb.load(dst, truncated, allow_remote=True)

        assert snapshot(dst) == before


def test_load_conflicts_like_copy(fresh: MakeDb, tmp_path: Path) -> None:
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh("sqlite")) as dst:
        project = populate(src)
        archive = tmp_path / "a.zip"
        dualdb.dump(src, archive, projects=[project])
        dualdb.load(dst, archive)
        rename_project(dst, project, "Changed")
        before = snapshot(dst)
        with pytest.raises(Conflict, match=f"projects {project}"):
            dualdb.load(dst, archive)
        assert snapshot(dst) == before
        assert dualdb.load(dst, archive, on_conflict="overwrite", verify=True).verified
        assert dst.projects.get(project).name == src.projects.get(project).name
