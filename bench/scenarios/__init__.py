"""The benchmark scenarios, in the order a run takes them.

Each module has a docstring saying what it measures and how, and:
- ``NAME``: what ``bench/run.py --only`` calls it;
- ``run(ctx) -> dict``: measure (spoold, and the peers where installed);
- ``rows(result, ctx) -> list``: the table rows (``report.row``);
- optionally ``extra(result) -> list[str]``: lines printed after the table.
"""

from scenarios import array, cpu, dropped, idle, many, scale, start, submit, throughput

ALL = {m.NAME: m for m in (submit, start, throughput, array, cpu, many, idle, dropped, scale)}
