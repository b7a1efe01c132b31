"""`/readyz` flips with the store and polling; `/metrics` exports SPEC §7 and values move."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import Rig, make_rig
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

RigFactory = Callable[..., Awaitable[Rig]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

SPEC_METRICS = (
    "bridge_poll_runs_total",
    "bridge_poll_duration_seconds",
    "bridge_upstream_requests_total",
    "bridge_items_fetched_total",
    "bridge_notifications_total",
    "bridge_deliveries_total",
    "bridge_delivery_seconds",
    "bridge_event_to_delivery_seconds",
    "bridge_queue_depth",
    "bridge_target_paused",
    "bridge_cursor_lag_seconds",
    "bridge_poll_stale",
)


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


async def readyz(rig: Rig) -> tuple[int, dict[str, Any]]:
    resp = await rig.client.get("/readyz")
    body: dict[str, Any] = await resp.json()
    return resp.status, body


# --------------------------------------------------------------------------- readiness


async def test_readiness_follows_the_store(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    assert await readyz(rig) == (200, {"status": "ready"})
    store = rig.bridge.store
    assert store is not None

    await store.close()  # the store stops answering: ping() raises StoreUnavailable
    status, body = await readyz(rig)
    assert status == 503
    assert body["status"] == "unavailable"
    assert len(body["reasons"]) == 1
    assert body["reasons"][0].startswith("store not answering")
    assert (await rig.client.get("/healthz")).status == 200  # alive, just not ready
    resp = await rig.client.get("/api/v1/status", headers=rig.auth)
    assert resp.status == 503  # the admin API says so too, as JSON
    assert (await resp.json())["error"]["code"] == "unavailable"

    await store.open()  # the same store, reconnected
    assert await readyz(rig) == (200, {"status": "ready"})


async def test_a_stale_poll_shows_in_status_and_metrics_but_keeps_the_bridge_ready(
    rig_factory: RigFactory,
) -> None:
    # SPEC §7: a vendor outage must not take the push endpoint and admin API off the
    # Service; the stale poll is reported by the status API, a metric and an alert.
    rig = await rig_factory()
    assert (await readyz(rig))[0] == 200
    interval = rig.settings.poll.events.interval_s
    rig.clock.advance(3 * interval + 1)
    assert await readyz(rig) == (200, {"status": "ready"})
    resp = await rig.client.get("/api/v1/status", headers=rig.auth)
    events = (await resp.json())["pollers"]["events"]
    assert events["lag_s"] > 3 * interval
    stale = events["stale"]
    assert stale is not None
    assert "events poll" in stale
    assert value(await scrape(rig), "bridge_poll_stale", job="events") == 1
    assert value(await scrape(rig), "bridge_cursor_lag_seconds", job="events") > 3 * interval

    resp = await rig.client.post("/api/v1/poll", headers=rig.auth)
    assert resp.status == 200
    resp = await rig.client.get("/api/v1/status", headers=rig.auth)
    assert (await resp.json())["pollers"]["events"]["stale"] is None
    assert value(await scrape(rig), "bridge_poll_stale", job="events") == 0


# --------------------------------------------------------------------------- metrics


async def scrape(rig: Rig, families: set[str] | None = None) -> Samples:
    """Samples by (name, labels); `families` collects the exported family names."""
    resp = await rig.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        if families is not None:
            families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def test_every_spec_metric_is_exported_and_moves_with_deliveries(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    families: set[str] = set()
    before = await scrape(rig, families)
    for metric in SPEC_METRICS:
        assert metric.removesuffix("_total") in families, metric
    # Series with labels known up front exist at 0 before first use.
    assert ("bridge_notifications_total", frozenset({("type", "bridge.test")})) in before
    failed = frozenset({("job", "events"), ("outcome", "failure")})
    assert before[("bridge_poll_runs_total", failed)] == 0

    # A 410 pauses the target: paused gauge, queue depth and the paused outcome move.
    answers = {"status": 410}
    rig.receiver.behaviour = lambda _n: (answers["status"], {})
    for _ in range(2):
        rig.sim.add_event(timestamp=int(rig.clock.now()) - 30)
    rig.clock.advance(1)
    assert (await rig.client.post("/api/v1/poll", headers=rig.auth)).status == 200
    await wait_for(lambda: rig.bridge.dispatchers["hook"].paused, message="paused")
    await rig.settle()
    paused = await scrape(rig)
    assert value(paused, "bridge_target_paused", target="hook") == 1
    assert value(paused, "bridge_target_paused", target="out") == 0
    assert value(paused, "bridge_queue_depth", target="hook", state="pending") == 2
    assert value(paused, "bridge_deliveries_total", target="hook", outcome="paused") == 1

    answers["status"] = 200
    resp = await rig.client.post("/api/v1/targets/hook/resume", headers=rig.auth)
    assert resp.status == 200
    await wait_for(lambda: len(rig.receiver.envelopes) == 2, message="2 delivered")
    await wait_for(lambda: len(rig.console_envelopes()) == 2, message="2 printed")
    await rig.settle()
    after = await scrape(rig)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("bridge_poll_runs_total", job="events", outcome="success") == 1
    assert moved("bridge_poll_duration_seconds_count", job="events") == 1
    assert moved("bridge_items_fetched_total", job="events") == 2
    assert moved("bridge_notifications_total", type="event.created") == 2
    assert total(after, "bridge_upstream_requests_total") > total(
        before, "bridge_upstream_requests_total"
    )
    assert total(after, "bridge_upstream_requests_total", status="200") > 0
    for target in ("hook", "out"):
        assert moved("bridge_deliveries_total", target=target, outcome="delivered") == 2
        assert moved("bridge_event_to_delivery_seconds_count", target=target) == 2
        # Events happened 30 s before the poll: the latency histogram says so.
        assert moved("bridge_event_to_delivery_seconds_sum", target=target) >= 2 * 30
        assert value(after, "bridge_queue_depth", target=target, state="pending") == 0
    # 3 attempts to hook (the 410 and two successes), 2 to the console.
    assert moved("bridge_delivery_seconds_count", target="hook") == 3
    assert moved("bridge_delivery_seconds_count", target="out") == 2
    assert value(after, "bridge_target_paused", target="hook") == 0
    lag = value(after, "bridge_cursor_lag_seconds", job="events")
    assert 0 <= lag < rig.settings.poll.events.interval_s
    assert ("bridge_cursor_lag_seconds", frozenset({("job", "events")})) in after

    # A dead delivery shows in the queue depth and the dead outcome.
    answers["status"] = 400
    rig.sim.add_event(timestamp=int(rig.clock.now()) - 5)
    rig.clock.advance(1)
    assert (await rig.client.post("/api/v1/poll", headers=rig.auth)).status == 200
    await wait_for(lambda: len(rig.console_envelopes()) == 3, message="3 printed")
    await wait_for(
        lambda: rig.bridge.dispatchers["hook"].health.last_status == 400, message="a 400"
    )
    await rig.settle()
    dead = await scrape(rig)
    assert value(dead, "bridge_queue_depth", target="hook", state="dead") == 1
    assert value(dead, "bridge_deliveries_total", target="hook", outcome="dead") == 1
