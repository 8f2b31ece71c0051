"""Benchmarks: dualdb against the raw driver (``sqlite3`` / psycopg 3) on the same schema.

Run with ``python -m benchmarks`` (or ``make bench``).  One run measures, on each backend:

* single-row get by id (µs/op): ``db.projects.get(id)`` vs a hand-written ``SELECT``;
* claim→complete throughput (tasks/s) with 1 and N processes, dualdb vs hand-written SQL;
* claim cost independence: µs per claim with few vs many finished tasks, and with many
  blocked tasks (long dependency chains, fan-ins), plus the plan of dualdb's claim statement.

See ``docs/benchmarks.md`` for what each number means and the numbers of a recorded run.
"""
