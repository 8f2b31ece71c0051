"""One repository per table.  Reach them as ``session.projects`` or ``db.projects``."""

from dualdb.repositories.base import Repository
from dualdb.repositories.generations import GenerationsRepository
from dualdb.repositories.projects import ProjectsRepository
from dualdb.repositories.shots import ShotGenerationsRepository, ShotsRepository
from dualdb.repositories.tasks import TasksRepository
from dualdb.repositories.users import UsersRepository

__all__ = [
    "GenerationsRepository",
    "ProjectsRepository",
    "Repository",
    "ShotGenerationsRepository",
    "ShotsRepository",
    "TasksRepository",
    "UsersRepository",
]
