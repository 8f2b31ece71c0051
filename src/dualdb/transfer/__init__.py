"""Moving data between databases and dump files: ``dualdb copy``, ``dump`` and ``load``.

Every value arrives exactly, whichever backends are involved (see docs/copy.md and
:mod:`dualdb.transfer.rows`); what was written is verified afterwards, table by table.
"""

from dualdb.errors import VerificationFailed
from dualdb.transfer.archive import DumpResult, dump, load
from dualdb.transfer.copy import copy
from dualdb.transfer.core import (
    ON_CONFLICT,
    OnConflict,
    TableResult,
    TransferResult,
)

__all__ = [
    "ON_CONFLICT",
    "DumpResult",
    "OnConflict",
    "TableResult",
    "TransferResult",
    "VerificationFailed",
    "copy",
    "dump",
    "load",
]
