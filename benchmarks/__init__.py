"""runner's benchmark: the cases of issue 5 against ProcessPoolExecutor(2), in one run.

``python -m benchmarks`` starts its own broker (journal on a temporary file) and
two workers on 127.0.0.1, runs each case on runner and on
``concurrent.futures.ProcessPoolExecutor(max_workers=2)``, prints one table, saves
the run as JSON under ``benchmarks/results/`` and the table in docs/benchmarks.md.

| module | what |
| --- | --- |
| ``settings`` | sizes per mode (full, quick, tiny), the cluster's shape, time budgets |
| ``tasks`` | the jobs: no-op, calibrated CPU work, a 10 ms sleep |
| ``cluster`` | broker and worker processes, stopped by PID; RSS and CPU from /proc |
| ``measure`` | throughput and round-trip loops, each bounded in count and time |
| ``cases`` | cases 1-5 and 7 on runner and on PPE |
| ``aio_client``, ``lag``, ``cores`` | cases 12b and 12c: AsyncClient against Client, and its loop's lag under load (the client on a core of its own, and sharing) |
| ``scale`` | case 6: a million queued jobs, a kill -9 and restart, a drain |
| ``targets`` | the table's rows and the issue's targets |
| ``report`` | the table, the JSON file, the docs section; ``machine``: what it ran on |
"""
