"""``dualdb dump`` and ``dualdb load``: a portable archive that loads into either backend.

The format (docs/copy.md): a zip file holding ``manifest.json`` and one JSON Lines file per
table, ``tables/<table>.jsonl``.  Each line is one row, a JSON array of its portable values in
the manifest's column order (:mod:`dualdb.transfer.rows`), rows in primary-key order.  The
manifest records the format version, the schema revision, and per table the columns, the row
count, the SHA-256 of the file's bytes and the content checksum (the same one ``copy``
verifies with).  ``load`` checks all of it before writing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import dualdb
from dualdb import migrations
from dualdb.database import Database
from dualdb.errors import InvalidInput, SchemaOutOfDate
from dualdb.transfer.copy import (
    DatabaseSource,
    check_batch_size,
    check_revision,
    project_ids,
    refuse_remote,
    snapshot,
)
from dualdb.transfer.core import (
    DEFAULT_BATCH,
    ON_CONFLICT,
    OnConflict,
    ProgressCallback,
    TransferResult,
    transfer,
)
from dualdb.transfer.rows import SPEC, SPECS, Checksum, Row, TableSpec, check_portable, dump_line

FORMAT = "dualdb-dump"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _member(table: str) -> str:
    return f"tables/{table}.jsonl"


@dataclass
class DumpResult:
    """What :func:`dump` wrote: rows and content checksum per table."""

    path: Path
    tables: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows written in all."""
        return sum(n for n, _ in self.tables.values())


def dump(
    db: Database,
    path: str | os.PathLike[str],
    *,
    projects: Sequence[uuid.UUID | str] | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: ProgressCallback | None = None,
) -> DumpResult:
    """Write ``projects`` (with everything under them and their owners), or every row, of
    ``db`` to the archive ``path`` (replaced whole, only once complete).

    Raises :class:`~dualdb.errors.SchemaOutOfDate` unless ``db`` is at the migration head.
    """
    check_batch_size(batch_size)
    ids = project_ids(projects)
    revision = check_revision(db, "source")
    target = Path(path)
    if not target.parent.resolve().is_dir():
        raise InvalidInput("output", f"folder {target.parent} does not exist")
    if target.is_dir():
        raise InvalidInput("output", f"{target} is a folder")
    result = DumpResult(target)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dualdb": dualdb.__version__,
        "revision": revision,
        "created_at": datetime.now(UTC).isoformat(),
        "source_backend": db.backend,
        "projects": None if ids is None else [str(i) for i in ids],
        "tables": [],
    }
    fd, tmp = tempfile.mkstemp(prefix=".dualdb-dump-", dir=target.parent.resolve())
    os.close(fd)
    try:
        with snapshot(db) as conn, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            source = DatabaseSource(conn, ids, batch_size)
            for spec in SPECS:
                total = source.count(spec)
                checksum, raw = Checksum(), hashlib.sha256()
                with zf.open(_member(spec.name), "w", force_zip64=True) as out:
                    for page in source.pages(spec):
                        for row in page:
                            data = (dump_line(row) + "\n").encode()
                            out.write(data)
                            raw.update(data)
                            checksum.add(spec, row)
                        if progress is not None:
                            progress(spec.name, checksum.rows, total)
                manifest["tables"].append(
                    {
                        "name": spec.name,
                        "file": _member(spec.name),
                        "columns": list(spec.columns),
                        "rows": checksum.rows,
                        "sha256": raw.hexdigest(),
                        "checksum": checksum.digest,
                    }
                )
                result.tables[spec.name] = (checksum.rows, checksum.digest)
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def _bad(message: str) -> InvalidInput:
    return InvalidInput("dump", f"{message}: the file is not a complete dualdb dump")


class ArchiveSource:
    """The rows of an opened dump, a page at a time."""

    def __init__(self, zf: zipfile.ZipFile, manifest: dict[str, Any], batch_size: int) -> None:
        self._zf = zf
        self._tables = {t["name"]: t for t in manifest["tables"]}
        self._batch = batch_size

    def count(self, spec: TableSpec) -> int:
        """Rows of ``spec`` in the dump (checked against the manifest first)."""
        return int(self._tables[spec.name]["rows"])

    def pages(self, spec: TableSpec) -> Iterator[list[Row]]:
        """Rows of ``spec``, in key order."""
        page: list[Row] = []
        with self._zf.open(_member(spec.name)) as lines:
            for n, line in enumerate(lines, 1):
                page.append(_parse(spec, line, n))
                if len(page) >= self._batch:
                    yield page
                    page = []
        if page:
            yield page


def _parse(spec: TableSpec, line: bytes, n: int) -> Row:
    where = f"{_member(spec.name)} line {n}"
    try:
        values = json.loads(line)
    except (ValueError, RecursionError):
        raise _bad(f"{where} is not JSON") from None
    return check_portable(spec, values, where)


def _open(path: Path) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    if not path.is_file():
        raise InvalidInput("dump", f"{path} does not exist")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InvalidInput("dump", f"{path} is not a dualdb dump (not a zip file: {err})") from None
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except KeyError:
        zf.close()
        raise _bad(f"{path} has no {MANIFEST}") from None
    except (ValueError, zipfile.BadZipFile, OSError) as err:
        zf.close()
        raise _bad(f"{MANIFEST} cannot be read ({err})") from None
    return zf, manifest


def check_dump(zf: zipfile.ZipFile, manifest: dict[str, Any]) -> None:
    """The whole dump checked against its manifest, before anything is written.

    Format and version, the schema revision (this dualdb's head), each table's columns, row
    count, file hash, content checksum, and every row's values and key order.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad("the manifest is not a dualdb dump's")
    if manifest.get("version") != FORMAT_VERSION:
        raise InvalidInput(
            "dump",
            f"format version {manifest.get('version')!r}: this dualdb reads {FORMAT_VERSION}",
        )
    head = migrations.head_revision()
    if manifest.get("revision") != head:
        raise SchemaOutOfDate(
            f"the dump is at schema revision {manifest.get('revision')!r}, this dualdb needs "
            f"{head}: load it with the dualdb version that wrote it ({manifest.get('dualdb')})"
        )
    found = manifest.get("tables")
    tables: list[Any] = found if isinstance(found, list) else []
    names = [t.get("name") if isinstance(t, dict) else None for t in tables]
    if names != [s.name for s in SPECS]:
        raise _bad("the manifest does not list this schema's tables")
    for entry in tables:
        spec = SPEC[entry["name"]]
        if entry.get("columns") != list(spec.columns):
            raise _bad(f"table {spec.name}: the columns differ from this schema's")
        _check_table(zf, spec, entry)


def _check_table(zf: zipfile.ZipFile, spec: TableSpec, entry: dict[str, Any]) -> None:
    checksum, raw = Checksum(), hashlib.sha256()
    previous: tuple[Any, ...] | None = None
    try:
        stream: IO[bytes] = zf.open(_member(spec.name))
    except KeyError:
        raise _bad(f"{_member(spec.name)} is missing") from None
    try:
        with stream:
            for n, line in enumerate(stream, 1):
                raw.update(line)
                row = _parse(spec, line, n)
                key = spec.key_of(row)
                if previous is not None and key <= previous:
                    raise _bad(f"{_member(spec.name)} line {n} is out of key order")
                previous = key
                checksum.add(spec, row)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise _bad(f"{_member(spec.name)} cannot be read ({err})") from None
    if raw.hexdigest() != entry.get("sha256") or checksum.rows != entry.get("rows"):
        raise InvalidInput(
            "dump",
            f"table {spec.name}: {checksum.rows} rows whose bytes do not match the manifest "
            f"(which says {entry.get('rows')}): the file is corrupt",
        )
    if checksum.digest != entry.get("checksum"):
        raise InvalidInput("dump", f"table {spec.name}: the content checksum does not match")


def load(
    db: Database,
    path: str | os.PathLike[str],
    *,
    on_conflict: OnConflict = "fail",
    requeue_running: bool = False,
    dry_run: bool = False,
    verify: bool = False,
    allow_remote: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: ProgressCallback | None = None,
) -> TransferResult:
    """Load the dump at ``path`` into ``db``; with ``verify``, compare the rows afterwards.

    The dump is checked whole against its manifest first (:func:`check_dump`): a corrupt or
    foreign file is :class:`~dualdb.errors.InvalidInput` and nothing is written.  The rest is
    :func:`dualdb.copy`'s behaviour: the same conflicts, batches, reruns and refusals.
    """
    if on_conflict not in ON_CONFLICT:
        raise InvalidInput("on_conflict", f"must be one of {', '.join(ON_CONFLICT)}")
    check_batch_size(batch_size)
    if not dry_run:
        refuse_remote(db, allow_remote, "load into")
    check_revision(db, "target")
    zf, manifest = _open(Path(path))
    with zf:
        check_dump(zf, manifest)
        return transfer(
            ArchiveSource(zf, manifest, batch_size),
            db,
            on_conflict=on_conflict,
            requeue_running=requeue_running,
            dry_run=dry_run,
            verify=verify,
            progress=progress,
        )
