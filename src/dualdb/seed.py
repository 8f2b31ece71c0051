"""``dualdb seed``: idempotent demo data for local development.

Every id is fixed (derived from :data:`SEED_NAMESPACE`), so seeding twice — or seeding SQLite
and Postgres — gives the same rows with the same ids.  Rows that already exist are left as
they are (a worker may have moved the seeded tasks on).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from dualdb.backends import backend_for
from dualdb.database import Database, Session
from dualdb.errors import ConfigError
from dualdb.schema import DUMMY_USER_ID

#: Namespace of the seed's deterministic ids (uuid5).
SEED_NAMESPACE = uuid.UUID("6d7a1d50-6c0b-4a59-9a53-7a4c35f1f3a1")
#: The local stand-in for an authenticated user.
DUMMY_USER = uuid.UUID(DUMMY_USER_ID)
PROJECT_NAME = "My Seeded Project"


def seed_id(name: str) -> uuid.UUID:
    """The fixed id of the seeded row called ``name``."""
    return uuid.uuid5(SEED_NAMESPACE, name)


@dataclass
class SeedResult:
    """What :func:`seed` did: rows created per table (0 everywhere on a re-run)."""

    created: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, n: int = 1) -> None:
        """Count ``n`` rows created in ``table``."""
        self.created[table] = self.created.get(table, 0) + n

    @property
    def total(self) -> int:
        """Rows created in all."""
        return sum(self.created.values())


SHOTS = ("Opening", "Middle", "Finale")
GENERATIONS = (
    ("storyboard-1", "files/seed/storyboard-1.png", "image"),
    ("storyboard-2", "files/seed/storyboard-2.png", "image"),
)
# A chain: a keyframe, then a second keyframe after it, then a stitch of both.
TASKS = (
    ("keyframe-1", "single_image", {"prompt": "a lighthouse at dawn"}, "Opening", ()),
    (
        "keyframe-2",
        "single_image",
        {"prompt": "the same lighthouse at dusk"},
        "Middle",
        ("keyframe-1",),
    ),
    ("stitch", "travel_stitch", {"frames": 48}, "Finale", ("keyframe-1", "keyframe-2")),
)


def _seed(s: Session, result: SeedResult) -> None:
    if s.users.find(DUMMY_USER) is None:
        s.users.create(DUMMY_USER, email="dummy@local.dev")
        result.add("users")
    project_id = seed_id("project")
    if s.projects.find(project_id) is None:
        s.projects.create(PROJECT_NAME, DUMMY_USER, id=project_id)
        result.add("projects")
    for name in SHOTS:
        if s.shots.find(seed_id(f"shot:{name}")) is None:
            s.shots.create(project_id, name, id=seed_id(f"shot:{name}"))
            result.add("shots")
    opening = seed_id("shot:Opening")
    for key, location, kind in GENERATIONS:
        gid = seed_id(f"generation:{key}")
        if s.generations.find(gid) is None:
            s.generations.create(project_id, location=location, type=kind, id=gid)
            result.add("generations")
        if all(p.generation_id != gid for p in s.shots.placements(opening)):
            s.shots.add_generation(opening, gid)
            result.add("shot_generations")
    for key, task_type, params, shot, deps in TASKS:
        tid = seed_id(f"task:{key}")
        if s.tasks.find(tid) is None:
            s.tasks.create(
                project_id,
                task_type,
                {**params, "shot_id": str(seed_id(f"shot:{shot}"))},
                depends_on=[seed_id(f"task:{d}") for d in deps],
                id=tid,
            )
            result.add("tasks")


def seed(db: Database, *, allow_remote: bool = False) -> SeedResult:
    """Insert the demo data into ``db`` (idempotent; one transaction).

    Refuses a Postgres (web) database unless ``allow_remote`` is true.
    """
    if backend_for(db.target.backend).remote and not allow_remote:
        raise ConfigError(
            f"refusing to seed the {db.target.app_env} Postgres database {db.target.redacted}: "
            "pass --allow-remote if you really mean it"
        )
    result = SeedResult()
    with db.session() as s:
        _seed(s, result)
    return result
