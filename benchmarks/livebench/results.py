"""What a run offers (Load) and every figure it measured (Result), with the figures derived
from them. Numbers only: verify.py judges them, report.py prints them."""

from __future__ import annotations

import dataclasses

# A run whose generator could not offer this share of the nominal rate measured the
# generator, not the server.
GENERATOR_OK_SHARE = 0.97
GENERATOR_BUSY = 0.85  # of its core


@dataclasses.dataclass
class Load:
    sessions: int
    rate: float
    watchers: int
    seconds: float
    drain: float

    @property
    def frames_per_mirror(self) -> int:
        return round(self.rate * self.seconds)


@dataclasses.dataclass
class Result:
    target: str
    load: Load
    sent: int = 0
    offered_per_s: float = 0.0
    deliveries: int = 0
    expected_deliveries: int = 0
    delivered_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    ack_p50_ms: float = float("nan")
    ack_p99_ms: float = float("nan")
    buffer_peak: int | None = None  # hub only: its write buffers' high-water marks (/health)
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    behind_s: float = 0.0  # how far the slowest watcher was behind when sending stopped
    drain_s: float = 0.0  # time after sending stopped until everything arrived (or timeout)
    stored: int = 0
    stores: bool = True  # False for the bare fan-out: `stored` is then no criterion
    acked: int = 0
    errors: int = 0  # error frames and unexpected closes seen by the generator
    server_cpu_s: float = 0.0  # the sum over the server's processes (A + B when scaled out)
    # Each hub process's share of server_cpu_s (A, then B).
    process_cpu_s: list[float] = dataclasses.field(default_factory=list)
    redis_cpu_s: float | None = None  # the redis-server of a Redis backplane
    backplane_resets: int | None = None  # scaled out: reconnections of the backplane (/health)
    # Close codes of connections the server closed (1006: dropped) during the run, and counts.
    closes: dict[str, int] = dataclasses.field(default_factory=dict)
    # Per hub process: warning/error lines in its log during the run (teardown not included).
    log_warnings: dict[str, int] = dataclasses.field(default_factory=dict)
    server_cpu_util: float = 0.0
    cpu_per_1000: float = float("nan")
    peak_rss_mb: float = 0.0
    db_cpu_s: float = 0.0
    gen_cpu_util: float = 0.0
    send_lag_p99_ms: float = 0.0
    # CPU time of every other process on the machine during the run (a lower bound: a process
    # that started and ended within the run is missed).
    other_cpu_s: float = 0.0
    wall_s: float = 0.0  # from the first send to the end of the drain

    @property
    def processes(self) -> int:
        return len(self.process_cpu_s) or 1

    @property
    def process_utils(self) -> list[float]:
        """Each hub process's CPU, as a share of one core (A, then B)."""
        return [c / self.wall_s for c in self.process_cpu_s]

    @property
    def db_cpu_util(self) -> float:
        return self.db_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def redis_cpu_util(self) -> float:
        return (self.redis_cpu_s or 0.0) / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_with_redis_per_1000(self) -> float:
        """Server CPU plus redis-server's, per 1000 deliveries."""
        cpu = self.server_cpu_s + (self.redis_cpu_s or 0.0)
        return cpu / self.deliveries * 1000 if self.deliveries else float("nan")

    @property
    def other_cpu_util(self) -> float:
        return self.other_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def offered_share(self) -> float:
        return self.offered_per_s / (self.load.sessions * self.load.rate)

    @property
    def generator_limited(self) -> bool:
        """The generator could not offer the load because it ran out of CPU (rather than
        because the server pushed back)."""
        return self.offered_share < GENERATOR_OK_SHARE and self.gen_cpu_util > GENERATOR_BUSY

    def stored_text(self) -> str:
        return f"{self.stored}/{self.sent}" if self.stores else "not stored"

    def closes_text(self) -> str:
        return ", ".join(f"{code}x{n}" for code, n in self.closes.items())
