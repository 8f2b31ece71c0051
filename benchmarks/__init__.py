"""Benchmarks: dualdb against the raw driver (``sqlite3`` / psycopg 3) on the same schema.

Run with ``python -m benchmarks`` (or ``make bench``).  One run measures, on each backend, the
suite of issue 13 ("Near the raw driver"), each figure beside its target:

* A: single-row get/create/update/delete/list(50) (µs/op), dualdb vs hand-written SQL;
* B: bulk insert of 10k/100k tasks, ``create_many`` vs ``executemany`` and ``COPY``;
* C: claim→complete throughput with 1, 2, 4, 8 processes, with a duplicate count (must be 0);
* D: claim cost with few vs many finished or blocked tasks, plus the plan of dualdb's claim;
* E: iterating every task of a project vs a raw keyset scan, with peak RSS growth;
* F: enqueue→pickup latency and idle CPU of the stock ``dualdb worker``.

PNG plots of C, D and F go to ``--plots`` (matplotlib, the ``bench`` extra).  See
``docs/benchmarks.md`` for what each number means and the numbers of a recorded run.
"""
