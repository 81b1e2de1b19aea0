"""The live-path benchmark behind benchmarks/live_bench.py, one module per job:

- process.py: one pinned child process (its log, CPU time, memory), readiness probes;
- targets.py: the servers a run measures (hub, baseline, two hub processes joined by a
  backplane, a hub of another commit) and how they start and stop;
- load.py: the load generator: the WebSocket clients, mirrors sending on a schedule, watchers;
- verify.py: lost, duplicate, out-of-order and acked frames, and the `max` pass criteria;
- run.py: one run: fresh database, start the target, connect, stream, drain, measure;
- results.py: what a run offers (Load) and every figure it measured (Result);
- report.py: the tables, progress lines and JSON;
- scenarios.py: clinic and max (all and scaleout are both in a row).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
