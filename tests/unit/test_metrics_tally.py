"""The live path's tallies (hub.metrics): folded into their metrics, they render exactly as
the same updates made on the metrics directly would, and folding twice adds nothing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from hub.metrics import COUNT_BUCKETS, LATENCY_BUCKETS, CounterTally, HistogramTally

# Below, on and between the bounds, past the last one (the +Inf bucket), zero and negative.
LATENCIES = [0.0, -0.001, 0.0001, 0.00011, 0.0009, 0.001, 0.3, 10.0, 10.5, 99.0, 0.0001]
COUNTS = [1, 1, 2, 3, 5000, 5001, 0, 77, 1000]


def rendered(registry: CollectorRegistry) -> list[str]:
    """The exposition without its `_created` lines (when each metric was made)."""
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_a_folded_histogram_renders_as_observed_one() -> None:
    for buckets, values in ((LATENCY_BUCKETS, LATENCIES), (COUNT_BUCKETS, COUNTS)):
        direct_registry, folded_registry = CollectorRegistry(), CollectorRegistry()
        direct = Histogram("h", "help", buckets=buckets, registry=direct_registry)
        folded = Histogram("h", "help", buckets=buckets, registry=folded_registry)
        tally = HistogramTally(folded)
        for value in values:
            direct.observe(value)
            tally.observe(value)
        assert rendered(folded_registry) != rendered(direct_registry)
        tally.fold()
        assert rendered(folded_registry) == rendered(direct_registry)
        tally.fold()  # nothing new: nothing added
        assert rendered(folded_registry) == rendered(direct_registry)
        direct.observe(values[3])
        tally.observe(values[3])
        tally.fold()
        assert rendered(folded_registry) == rendered(direct_registry)


def test_a_folded_counter_adds_its_count_once() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "help", registry=registry)
    tally = CounterTally(counter)
    for _ in range(7):
        tally.count += 1
    assert registry.get_sample_value("c_total") == 0
    tally.fold()
    tally.fold()
    assert registry.get_sample_value("c_total") == 7
