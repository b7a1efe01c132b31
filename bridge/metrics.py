"""Prometheus metrics (SPEC §7), one registry per running bridge (no globals).

Labels are bounded: job names, endpoint templates, target names, outcomes and
notification types. Never a ticket, device or task id.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_EVENT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


class Metrics:
    """Every metric the bridge exports, registered on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.poll_runs = Counter(
            "bridge_poll_runs_total", "Poll runs by job and outcome", ["job", "outcome"], registry=r
        )
        self.poll_duration = Histogram(
            "bridge_poll_duration_seconds", "Duration of a poll run", ["job"], registry=r
        )
        self.upstream_requests = Counter(
            "bridge_upstream_requests_total",
            "Requests to the vendor API",
            ["endpoint", "status"],
            registry=r,
        )
        self.items_fetched = Counter(
            "bridge_items_fetched_total", "Items fetched from the vendor", ["job"], registry=r
        )
        self.items_malformed = Counter(
            "bridge_items_malformed_total", "Vendor items skipped as malformed", ["job"], registry=r
        )
        self.notifications = Counter(
            "bridge_notifications_total", "Notifications created", ["type"], registry=r
        )
        self.deliveries = Counter(
            "bridge_deliveries_total",
            "Delivery attempts by outcome (delivered, retry, dead, paused)",
            ["target", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "bridge_delivery_seconds",
            "Duration of one delivery attempt",
            ["target"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_delivery = Histogram(
            "bridge_event_to_delivery_seconds",
            "From the event's occurrence to its delivery",
            ["target"],
            buckets=_EVENT_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "bridge_queue_depth", "Deliveries by target and state", ["target", "state"], registry=r
        )
        self.target_paused = Gauge(
            "bridge_target_paused", "1 while a target is paused", ["target"], registry=r
        )
        self.poll_leader = Gauge(
            "bridge_poll_leader", "1 on the replica holding the poll lease, else 0", registry=r
        )
        self.target_failing = Gauge(
            "bridge_target_failing",
            "1 while a target is failing: only a probe delivery goes out (SPEC §4)",
            ["target"],
            registry=r,
        )
        self.store_errors = Counter(
            "bridge_store_errors_total",
            "Store operations that failed, by the component that retries them",
            ["component"],
            registry=r,
        )
        self.cursor_lag = Gauge(
            "bridge_cursor_lag_seconds",
            "How far a poller's cursor is behind now",
            ["job"],
            registry=r,
        )
        self.poll_stale = Gauge(
            "bridge_poll_stale",
            "1 while no poll of this job succeeded within 3 intervals (readiness ignores it)",
            ["job"],
            registry=r,
        )

        # Enrichment before storing (SPEC §5.1); both series exist from the start at 0.
        self.video_link_fetches = Counter(
            "bridge_video_link_fetches_total",
            "GetVideoDetail fetches for media.videos, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        self.event_detail_fetches = Counter(
            "bridge_event_detail_fetches_total",
            "detailV2 fetches for data.detail, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        for counter in (self.video_link_fetches, self.event_detail_fetches):
            for outcome in ("ok", "failed"):
                counter.labels(outcome=outcome)

    def start_series(self, *, types: Iterable[str], jobs: Iterable[str]) -> None:
        """Create the series whose labels are known up front, at 0.

        A labelled metric has no series until first used, so `rate()` and alerts on
        e.g. failed polls would see "no data" instead of 0 until the first failure.
        """
        for type_ in types:
            self.notifications.labels(type=type_)
        for job in jobs:
            for outcome in ("success", "failure"):
                self.poll_runs.labels(job=job, outcome=outcome)
            self.poll_duration.labels(job=job)
            self.items_fetched.labels(job=job)

    def upstream_request(self, endpoint: str, status: str) -> None:
        """Hook for the upstream client (`on_request`)."""
        self.upstream_requests.labels(endpoint=endpoint, status=status).inc()
