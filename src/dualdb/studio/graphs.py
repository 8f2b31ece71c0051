"""The data behind the studio's extra views: a task's dependency graph, a shot's generations.

Both read through the DAL (:meth:`~dualdb.repositories.tasks.TasksRepository.get`,
:meth:`~dualdb.repositories.shots.ShotsRepository.placements`, …) plus the indexed
``task_dependencies`` edges, so they behave the same on SQLite and Postgres.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from dualdb.database import Database
from dualdb.records import Generation, Shot, ShotGeneration, Task
from dualdb.schema import task_dependencies, tasks

#: Most tasks one graph shows in each direction (the rest is summarised as "truncated").
MAX_GRAPH_NODES = 500


@dataclass(frozen=True)
class GraphNode:
    """A task in another task's dependency graph, ``depth`` edges away from it."""

    id: uuid.UUID
    task_type: str
    status: str
    created_at: datetime
    depth: int
    #: The tasks at ``depth - 1`` this one is linked to (its dependents upstream, or
    #: its dependencies downstream).
    via: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class TaskGraph:
    """A task, everything it waits for (transitively) and everything that waits for it."""

    task: Task
    #: What the task waits for: direct dependencies first (``depth`` 1), then theirs, …
    dependencies: list[GraphNode]
    #: What waits for the task: direct dependents first, then theirs, …
    dependents: list[GraphNode]
    #: True when a direction had more than :data:`MAX_GRAPH_NODES` tasks.
    truncated: bool

    @property
    def direct_dependencies(self) -> list[GraphNode]:
        """The tasks in the task's own ``dependant_on``."""
        return [n for n in self.dependencies if n.depth == 1]

    @property
    def direct_dependents(self) -> list[GraphNode]:
        """The tasks whose ``dependant_on`` names the task."""
        return [n for n in self.dependents if n.depth == 1]


def _walk(
    conn: sa.Connection, start: uuid.UUID, *, upstream: bool, limit: int
) -> tuple[list[GraphNode], bool]:
    """Breadth-first over ``task_dependencies``, one indexed query per level."""
    near, far = (
        (task_dependencies.c.task_id, task_dependencies.c.dependency_id)
        if upstream
        else (task_dependencies.c.dependency_id, task_dependencies.c.task_id)
    )
    seen: dict[uuid.UUID, tuple[int, list[uuid.UUID]]] = {}
    frontier = [start]
    depth = 0
    truncated = False
    while frontier and not truncated:
        depth += 1
        rows = conn.execute(sa.select(near, far).where(near.in_(frontier))).all()
        next_frontier: list[uuid.UUID] = []
        for here, there in rows:
            if there == start:
                continue
            if there in seen:
                level, via = seen[there]
                if level == depth and here not in via:
                    via.append(here)
                continue
            if len(seen) >= limit:
                truncated = True
                break
            seen[there] = (depth, [here])
            next_frontier.append(there)
        frontier = next_frontier
    if not seen:
        return [], truncated
    info = {
        r.id: r
        for r in conn.execute(
            sa.select(tasks.c.id, tasks.c.task_type, tasks.c.status, tasks.c.created_at).where(
                tasks.c.id.in_(list(seen))
            )
        )
    }
    nodes = [
        GraphNode(
            id=key,
            task_type=info[key].task_type,
            status=info[key].status,
            created_at=info[key].created_at,
            depth=level,
            via=tuple(via),
        )
        for key, (level, via) in seen.items()
        if key in info
    ]
    nodes.sort(key=lambda n: (n.depth, n.created_at, str(n.id)))
    return nodes, truncated


def task_graph(
    db: Database, task_id: uuid.UUID | str, *, limit: int = MAX_GRAPH_NODES
) -> TaskGraph:
    """The dependency graph of a task (:class:`~dualdb.errors.NotFound` if there is none)."""
    # The DAL call and the walks share one read-only transaction, and its connection.
    with db.scope.read() as conn:
        task = db.tasks.get(task_id)
        dependencies, cut_up = _walk(conn, task.id, upstream=True, limit=limit)
        dependents, cut_down = _walk(conn, task.id, upstream=False, limit=limit)
    # The direct dependencies in the order the task lists them (its ``dependant_on``).
    order = {dep: i for i, dep in enumerate(task.dependant_on)}
    dependencies.sort(key=lambda n: (n.depth, order.get(n.id, len(order)), n.created_at))
    return TaskGraph(task, dependencies, dependents, cut_up or cut_down)


@dataclass(frozen=True)
class PlacedGeneration:
    """A generation at its position on a shot."""

    placement: ShotGeneration
    generation: Generation


@dataclass(frozen=True)
class ShotTimeline:
    """A shot and its generations in position order."""

    shot: Shot
    items: list[PlacedGeneration]


def shot_timeline(db: Database, shot_id: uuid.UUID | str) -> ShotTimeline:
    """A shot's generations in position order (:class:`~dualdb.errors.NotFound` if no shot)."""
    # The three DAL calls share one read-only transaction rather than opening one each.
    with db.scope.read():
        shot = db.shots.get(shot_id)
        placements = db.shots.placements(shot.id)
        by_id = {g.id: g for g in db.shots.generations(shot.id)}
    items = [PlacedGeneration(p, by_id[p.generation_id]) for p in placements]
    return ShotTimeline(shot, items)
