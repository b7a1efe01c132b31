"""The upstream client against the real simulator on loopback (SPEC §5, UPSTREAM.md).

The client and the simulator share one `InstantClock`: a FakeClock whose sleeps
return at once after moving time forward. Backoff, Retry-After holds and the rate
limiter therefore cost no wall time, and the simulator stamps every request it
records with the client's clock, so spacing is asserted exactly. Only the
"timeout" fault waits for real (the client's aiohttp timeout is real time).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer
from conftest import wait_for

from bridge.clock import FakeClock
from bridge.settings import UpstreamSettings
from bridge.simulator import FaultSpec, Simulator, SimulatorConfig
from bridge.upstream import (
    Page,
    UpstreamApiError,
    UpstreamAuthError,
    UpstreamClient,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from bridge.upstream.envelope import parse_reply

BASE = 1_764_000_000
DAY = 86_400
RETRY_AFTER = 2.5  # the simulator's Retry-After on 429/503, in (instant) clock seconds
SECRETS = ("sim-key", "sim-token", "sim-password")
TEMPLATES = {
    "/V2/auth",
    "/V2/auth/token-switch",
    "/V2/auth/token-verify",
    "/V2/events",
    "/V2/event/detailV2",
    "/V2/event/GetVideoDetail",
    "/V2/event/StorageList",
    "/V2/event/videoClip/{sn}",
    "/V2/event/taskResult/{taskId}",
    "/V2/event/discard",
    "/V2/analytics/safety",
}


class InstantClock(FakeClock):
    """A FakeClock whose `sleep` returns at once, having moved time forward."""

    def __init__(self) -> None:
        super().__init__(start=BASE)
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds > 0:
            self.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> InstantClock:
    return InstantClock()


@pytest.fixture
def sim(clock: InstantClock) -> Simulator:
    config = SimulatorConfig(
        seed=1,
        devices=5,
        backlog=1000,
        rate=0,  # no live arrivals: the backlog is the whole world
        base_time=BASE,
        faults=FaultSpec(retry_after=RETRY_AFTER, slow_s=0.05),
    )
    return Simulator(config, clock=clock)


@pytest.fixture
async def server(aiohttp_server: Any, sim: Simulator) -> TestServer:
    return await aiohttp_server(sim.app())  # type: ignore[no-any-return]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


Labels = list[tuple[str, str]]
MakeClient = Callable[..., UpstreamClient]


@pytest.fixture
def labels() -> Labels:
    return []


@pytest.fixture
def tokens() -> list[str]:
    return []


@pytest.fixture
def make_client(
    server: TestServer,
    session: aiohttp.ClientSession,
    clock: InstantClock,
    labels: Labels,
    tokens: list[str],
) -> Iterator[MakeClient]:
    made: list[UpstreamClient] = []

    def make(
        *,
        base_url: str | None = None,
        auth: dict[str, Any] | None = None,
        retry_max_delay_s: float = 5.0,
        **settings: Any,
    ) -> UpstreamClient:
        values: dict[str, Any] = {
            "base_url": base_url or str(server.make_url("/")),
            "api_key": "sim-key",
            "auth": auth or {"token": "sim-token"},
            "timeout_s": 2,
            "max_requests_per_s": 1000,
            "max_retries": 3,
            **settings,
        }
        client = UpstreamClient(
            UpstreamSettings.model_validate(values),
            session,
            clock=clock,
            on_request=lambda endpoint, status: labels.append((endpoint, status)),
            on_token=tokens.append,
            retry_base_delay_s=0.01,
            retry_max_delay_s=retry_max_delay_s,
            rng=random.Random(7),
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


PASSWORD_AUTH = {"email": "ops@example.com", "password": "sim-password"}


def seen(sim: Simulator, method: str, path: str) -> list[float]:
    """Clock times of the requests the simulator saw for `method path`."""
    return [r.time for r in sim.requests if r.method == method and r.path == path]


def events_requests(sim: Simulator) -> list[float]:
    return seen(sim, "GET", "/V2/events")


async def one_page(client: UpstreamClient) -> Page:
    return await client.list_events(since=BASE - DAY, until=BASE, limit=10)


# ------------------------------------------------------------------ pure parts


def test_envelope_success_needs_result_true_and_code_s00000() -> None:
    ok = parse_reply("/x", 200, b'{"result": true, "code": "S00000", "data": [1]}', None)
    assert ok.data == [1]
    bare = parse_reply("/x", 200, b'{"videos": []}', None)  # no envelope: tolerated
    assert bare.data == {"videos": []}
    with pytest.raises(UpstreamApiError) as info:
        parse_reply("/x", 200, b'{"result": true, "code": "E1", "message": "m", "uq": "u"}', None)
    assert (info.value.code, info.value.message, info.value.uq) == ("E1", "m", "u")


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "error"),
    [
        (401, b'{"result": false, "code": "E40102"}', None, UpstreamAuthError),
        (403, b"forbidden", None, UpstreamAuthError),
        (429, b"", None, UpstreamRateLimited),
        (503, b"<html>", 3.0, UpstreamRateLimited),
        (500, b"<html>", None, UpstreamUnavailable),
        (404, b"not json", None, UpstreamApiError),
        (200, b'{"result": tru', None, UpstreamUnavailable),
        (200, b'"a string"', None, UpstreamUnavailable),
    ],
)
def test_envelope_errors_are_typed(
    status: int, body: bytes, retry_after: float | None, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        parse_reply("/V2/events", status, body, retry_after)
    assert type(info.value) is error
    assert info.value.status == status  # type: ignore[attr-defined]
    assert info.value.endpoint == "/V2/events"  # type: ignore[attr-defined]


def test_503_without_retry_after_is_plain_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable) as info:
        parse_reply("/x", 503, b"", None)
    assert not isinstance(info.value, UpstreamRateLimited)


# ------------------------------------------------------------- round trips


async def test_events_round_trip_sends_every_filter(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    device = sim.devices[0]
    page = await client.list_events(
        since=BASE - DAY, until=BASE, limit=7, types=[4, 22], device_cids=[device.device_cid]
    )
    assert page.limit == 7
    assert page.offset == 0
    assert 0 < len(page.items) <= 7
    assert all(i["type"] in (4, 22) and i["device_cid"] == device.device_cid for i in page.items)
    stamps = [i["timestamp"] for i in page.items]
    assert stamps == sorted(stamps)  # order=ASC, whatever the vendor's default is
    query = sim.requests[-1].query
    assert query["sort"] == "time"
    assert query["order"] == "ASC"
    assert query["type"] == "4,22"
    assert query["device_cids"] == device.device_cid
    assert page.count is not None
    assert page.count >= len(page.items)


async def test_detail_video_discard_round_trip(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client()
    item = sim.add_event(video=True, media_delay_s=0)
    ticket = item["ticket"]

    detail = await client.event_detail(ticket)
    assert [d["ticket"] for d in detail] == [ticket]

    videos = await client.video_detail(ticket)
    assert videos["videos"]
    assert all(v["url"].startswith("http") for v in videos["videos"])
    assert sim.requests[-1].method == "POST"

    await client.discard(ticket)
    assert sim.item(ticket) is None
    with pytest.raises(UpstreamApiError) as info:
        await client.event_detail(ticket)
    assert info.value.status == 404
    assert info.value.code
    assert info.value.uq


async def test_clip_task_and_storage_round_trip(
    make_client: MakeClient, sim: Simulator, clock: InstantClock
) -> None:
    client = make_client()
    sn = sim.devices[0].serial_number
    sim.fail_next_clips("D_E20003")
    task_id = await client.request_clip(
        sn, cam_id="C_F", file_name="incident-1", target_timestamp=BASE - 60, duration_s=20
    )
    assert task_id in sim.tasks
    assert sim.tasks[task_id].duration == 20

    result = await client.task_result(task_id)
    assert result["task_id"] == task_id
    assert result["task_state"] in range(7)

    clock.advance(3600)  # the simulated device runs the task to its end
    result = await client.task_result(task_id)
    assert result["task_state"] == 3  # failed with D_E20003

    page = await client.storage_list(since=BASE - 10, until=BASE + 7200)
    assert [i["task_id"] for i in page.items] == [task_id]
    assert sim.requests[-1].query["sort"] == "uploadDate"
    pages = [p async for p in client.iter_storage_pages(since=BASE - 10, until=BASE + 7200)]
    assert [i["task_id"] for p in pages for i in p.items] == [task_id]


async def test_safety_report_round_trip(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client()
    report = await client.safety_report(since=BASE - DAY, until=BASE, tz="Asia/Taipei")
    assert set(report) == {"summary", "trend"}
    categories = report["summary"]["event_category"]
    assert sum(c["count"] for c in categories) > 0
    assert report["trend"]
    assert sim.requests[-1].query["tz"] == "Asia/Taipei"


async def test_login_switch_and_verify_round_trip(
    make_client: MakeClient, sim: Simulator, tokens: list[str]
) -> None:
    client = make_client(auth={**PASSWORD_AUTH, "fleet_id": 102})
    assert await client.login() == "sim-token-f102"
    assert tokens == ["sim-token", "sim-token-f102"]  # both handed to the log scrubber
    assert [r.path for r in sim.requests] == ["/V2/auth", "/V2/auth/token-switch"]
    assert await client.verify_token() is True

    assert await client.token_switch(101) == "sim-token-f101"
    assert await client.verify_token() is True  # the switched token is the one used now
    assert not sim.token_valid("sim-token-f102")  # the switch revoked the old one


async def test_login_is_lazy_and_shared_by_concurrent_callers(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(auth=PASSWORD_AUTH)
    assert sim.requests == []  # constructing does not log in
    await asyncio.gather(*(one_page(client) for _ in range(5)))
    assert len(seen(sim, "POST", "/V2/auth")) == 1


async def test_wrong_password_is_an_auth_error_without_retries(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(auth={"email": "ops@example.com", "password": "not-the-password"})
    with pytest.raises(UpstreamAuthError) as info:
        await one_page(client)
    assert info.value.status == 401
    assert len(seen(sim, "POST", "/V2/auth")) == 1
    assert events_requests(sim) == []


# --------------------------------------------------------------------- paging


async def test_paging_1000_events_returns_each_ticket_once(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    pages = [p async for p in client.iter_event_pages(since=BASE - DAY - 1, until=BASE, limit=100)]
    tickets = [i["ticket"] for p in pages for i in p.items]
    assert len(tickets) == 1000
    assert len(set(tickets)) == 1000
    assert 10 <= len(events_requests(sim)) <= 11
    assert [p.offset for p in pages][:10] == list(range(0, 1000, 100))
    assert pages[0].count == 1000


async def test_paging_defaults_to_settings_page_size(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(page_size=400)
    pages = [p async for p in client.iter_event_pages(since=BASE - DAY - 1, until=BASE)]
    assert [len(p.items) for p in pages] == [400, 400, 200]
    assert [r.query["limit"] for r in sim.requests] == ["400"] * 3


async def test_prefetch_requests_the_next_page_while_the_caller_works_on_this_one(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    seen: list[int] = []
    tickets: list[str] = []
    async with contextlib.aclosing(
        client.iter_event_pages(since=BASE - DAY - 1, until=BASE, limit=100, prefetch=True)
    ) as pages:
        async for page in pages:
            # The caller is still on this page; the next one's request is under way.
            if page.offset < 900:
                requested = page.offset // 100 + 2
                await wait_for(
                    lambda n=requested: len(events_requests(sim)) == n,  # type: ignore[misc]
                    message="the next page requested",
                )
            seen.append(page.offset)
            tickets += [i["ticket"] for i in page.items]
    # The same pages, in order, as without prefetch; nothing requested twice.
    assert seen[:10] == list(range(0, 1000, 100))
    assert seen[10:] in ([], [1000])  # a last, empty page when the count is not trusted
    assert len(set(tickets)) == len(tickets) == 1000
    offsets = [r.query["offset"] for r in sim.requests if r.path == "/V2/events"]
    assert offsets == [str(o) for o in seen]


async def test_a_caller_stopping_early_cancels_the_prefetched_request(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()

    def fetching() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if "UpstreamClient._events" in repr(t)}

    async with contextlib.aclosing(
        client.iter_event_pages(since=BASE - DAY - 1, until=BASE, limit=100, prefetch=True)
    ) as pages:
        async for page in pages:
            assert page.offset == 0
            assert len(fetching()) == 1  # the prefetch
            break
    # Closing cancelled the prefetch: no task of ours is left running.
    assert fetching() == set()
    assert len(events_requests(sim)) <= 2  # one page read, at most one more requested


# --------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    "faults",
    [
        ("500",),
        ("503",),
        ("malformed",),
        ("timeout",),
        ("drop",),
        ("drop", "drop"),  # each drop is retried (and counted) by the client itself
    ],
)
async def test_get_is_retried_after_a_transient_fault(
    make_client: MakeClient, sim: Simulator, faults: tuple[str, ...]
) -> None:
    # The only tests here that wait for real: the client's 0.3 s timeout.
    client = make_client(timeout_s=0.3)
    sim.queue_faults(*faults, path_prefix="/V2/events")
    page = await one_page(client)
    assert len(page.items) == 10
    assert len(events_requests(sim)) == len(faults) + 1
    assert client.requests_made == len(faults) + 1


async def test_a_kept_alive_connection_dropped_unanswered_is_resent_at_once(
    make_client: MakeClient, sim: Simulator, labels: Labels
) -> None:
    """A server closing an idle connection just as it is reused looks like this: the
    read goes again on a new connection, with no backoff, no retry logged."""
    client = make_client()
    await one_page(client)  # leaves its connection idle in the pool
    sim.queue_faults("drop", path_prefix="/V2/events")
    with structlog.testing.capture_logs() as logs:
        page = await one_page(client)
    assert len(page.items) == 10
    assert len(events_requests(sim)) == 3  # the first page, the dropped one, its resend
    assert client.requests_made == 3
    assert labels == [("/V2/events", "200"), ("/V2/events", "200")]
    assert not [e for e in logs if e["log_level"] == "warning"]


async def test_slow_answer_within_the_timeout_is_not_a_failure(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    sim.queue_faults("slow", path_prefix="/V2/events")
    assert len((await one_page(client)).items) == 10
    assert client.requests_made == 1


async def test_result_false_is_an_api_error_with_vendor_fields(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    sim.queue_faults("result_false", path_prefix="/V2/events")
    with pytest.raises(UpstreamApiError) as info:
        await one_page(client)
    err = info.value
    assert (err.code, err.message, err.status) == ("E50002", "simulated refusal", 200)
    assert err.uq is not None
    assert len(err.uq) == 36
    assert err.endpoint == "/V2/events"
    assert len(events_requests(sim)) == 1  # the vendor said no: not retried


async def test_429_retry_comes_no_earlier_than_retry_after(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    sim.queue_faults("429", path_prefix="/V2/events")
    assert len((await one_page(client)).items) == 10
    first, second = events_requests(sim)
    assert second - first >= RETRY_AFTER


async def test_retry_after_holds_back_every_call_of_the_client(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(max_retries=0)
    ticket = sim.events[0].ticket
    sim.queue_faults("429", path_prefix="/V2/events")
    with pytest.raises(UpstreamRateLimited) as info:
        await one_page(client)
    assert info.value.retry_after == RETRY_AFTER
    (refused_at,) = events_requests(sim)
    await client.event_detail(ticket)  # another endpoint, same client: held back too
    (detail_at,) = seen(sim, "GET", "/V2/event/detailV2")
    assert detail_at - refused_at >= RETRY_AFTER


async def test_retry_after_beyond_the_max_delay_fails_fast(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(retry_max_delay_s=1.0)  # RETRY_AFTER is 2.5
    sim.queue_faults("429", path_prefix="/V2/events")
    with pytest.raises(UpstreamRateLimited):
        await one_page(client)
    with pytest.raises(UpstreamRateLimited) as info:  # still held: not even sent
        await client.task_result("anything")
    assert 0 < (info.value.retry_after or 0) <= RETRY_AFTER
    assert client.requests_made == 1


async def test_exhausted_retries_raise_unavailable(
    make_client: MakeClient, sim: Simulator, clock: InstantClock
) -> None:
    client = make_client(max_retries=3)
    sim.queue_faults("500", "500", "500", "500", path_prefix="/V2/events")
    with pytest.raises(UpstreamUnavailable) as info:
        await one_page(client)
    assert info.value.status == 500
    assert info.value.code == "E50001"
    assert len(events_requests(sim)) == 4
    assert len(clock.slept) >= 3  # backed off between the attempts


@pytest.mark.parametrize("fault", ["500", "timeout", "drop", "malformed", "503"])
async def test_video_clip_is_never_retried_blindly(
    make_client: MakeClient, sim: Simulator, fault: str
) -> None:
    client = make_client(timeout_s=0.3)
    sim.queue_faults(fault, path_prefix="/V2/event/videoClip")
    with pytest.raises(UpstreamUnavailable):
        await client.request_clip(
            sim.devices[0].serial_number, cam_id="C_F", file_name="x", target_timestamp=BASE
        )
    assert len(seen(sim, "POST", f"/V2/event/videoClip/{sim.devices[0].serial_number}")) == 1
    assert client.requests_made == 1


async def test_enrichment_reads_make_one_attempt_when_asked(
    make_client: MakeClient, sim: Simulator
) -> None:
    # Video links and detail during ingest retry on the next re-scan, never in the call.
    client = make_client()
    ticket = sim.events[0].ticket
    sim.queue_faults("500", "500", path_prefix="/V2/event/")
    with pytest.raises(UpstreamUnavailable):
        await client.video_detail(ticket, retry=False)
    with pytest.raises(UpstreamUnavailable):
        await client.event_detail(ticket, retry=False)
    assert len(seen(sim, "POST", "/V2/event/GetVideoDetail")) == 1
    assert len(seen(sim, "GET", "/V2/event/detailV2")) == 1
    # By default they stay retried like any read (the clip tracker relies on it).
    sim.queue_faults("500", path_prefix="/V2/event/GetVideoDetail")
    await client.video_detail(ticket)
    assert len(seen(sim, "POST", "/V2/event/GetVideoDetail")) == 3


async def test_discard_on_500_is_not_retried(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client()
    ticket = sim.events[0].ticket
    sim.queue_faults("500", path_prefix="/V2/event/discard")
    with pytest.raises(UpstreamUnavailable):
        await client.discard(ticket)
    assert len(seen(sim, "POST", "/V2/event/discard")) == 1


async def test_video_clip_is_retried_after_429(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client()
    sn = sim.devices[1].serial_number
    sim.queue_faults("429", path_prefix="/V2/event/videoClip")
    task_id = await client.request_clip(sn, cam_id="ALL", file_name="x", target_timestamp=BASE)
    assert list(sim.tasks) == [task_id]  # one task: the 429 did no work
    first, second = seen(sim, "POST", f"/V2/event/videoClip/{sn}")
    assert second - first >= RETRY_AFTER


async def test_video_clip_is_retried_when_the_connection_was_refused(
    make_client: MakeClient,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(UpstreamUnavailable) as info:
        await client.request_clip("SN1", cam_id="C_F", file_name="x", target_timestamp=BASE)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    assert client.requests_made == 3  # never reached the server: safe to repeat


# ------------------------------------------------------------------ re-login


async def test_revoked_token_means_exactly_one_new_login(
    make_client: MakeClient, sim: Simulator, tokens: list[str]
) -> None:
    client = make_client(auth=PASSWORD_AUTH)
    await one_page(client)
    assert len(seen(sim, "POST", "/V2/auth")) == 1
    sim.revoke_token()
    # Several callers are refused at once; still only one of them logs in.
    pages = await asyncio.gather(*(one_page(client) for _ in range(4)))
    assert all(len(p.items) == 10 for p in pages)
    assert len(seen(sim, "POST", "/V2/auth")) == 2
    assert tokens == ["sim-token", "sim-token"]


async def test_token_refused_again_after_relogin_is_an_auth_error(
    make_client: MakeClient, sim: Simulator
) -> None:
    # The simulator expects "Bearer": with another scheme every token is refused.
    client = make_client(auth=PASSWORD_AUTH, auth_scheme="Token")
    # Bounded: a client that logs in again and again would otherwise hang here.
    with pytest.raises(UpstreamAuthError) as info:
        async with asyncio.timeout(10):
            await one_page(client)
    assert info.value.status == 401
    assert len(seen(sim, "POST", "/V2/auth")) == 2  # the lazy login and ONE re-login
    assert len(events_requests(sim)) == 2


async def test_static_token_rejected_is_an_auth_error(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    sim.revoke_token()
    with pytest.raises(UpstreamAuthError) as info:
        await one_page(client)
    assert (info.value.status, info.value.code) == (401, "E40102")
    assert seen(sim, "POST", "/V2/auth") == []
    assert await client.verify_token() is False


async def test_verify_token_does_not_log_in_again(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client(auth=PASSWORD_AUTH)
    assert await client.verify_token() is True
    sim.revoke_token()
    assert await client.verify_token() is False
    assert len(seen(sim, "POST", "/V2/auth")) == 1


# --------------------------------------------------------- pacing and metrics


async def test_rate_limiter_spaces_sequential_requests(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(max_requests_per_s=4)
    for _ in range(5):
        await one_page(client)
    times = events_requests(sim)
    assert len(times) == 5
    assert all(b - a >= 0.25 for a, b in itertools.pairwise(times))


async def test_rate_limiter_spaces_concurrent_requests(
    server: TestServer, sim: Simulator, clock: InstantClock
) -> None:
    sent: list[float] = []  # the clock when each request was answered
    settings = UpstreamSettings.model_validate(
        {
            "base_url": str(server.make_url("/")),
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "max_requests_per_s": 10,
        }
    )
    started = clock.monotonic()
    async with aiohttp.ClientSession() as session:
        client = UpstreamClient(
            settings, session, clock=clock, on_request=lambda *_: sent.append(clock.monotonic())
        )
        await asyncio.gather(*(one_page(client) for _ in range(6)))
        client.close()
    assert len(sent) == 6
    # Six concurrent calls need five intervals of limiter time at least. (The exact
    # spacing of concurrent callers is tested on bridge.ratelimit with a FakeClock.)
    assert max(sent) - started >= 5 * 0.1 - 1e-9


async def test_on_request_labels_are_templates(
    make_client: MakeClient, sim: Simulator, labels: Labels
) -> None:
    client = make_client(auth=PASSWORD_AUTH, timeout_s=0.3)
    sn = sim.devices[0].serial_number
    task_id = await client.request_clip(sn, cam_id="C_F", file_name="x", target_timestamp=BASE)
    # The drop comes last: on the kept-alive connection a drop would be resent at once
    # (see below); after the timeout closed that connection, it meets a new one.
    sim.queue_faults("500", "timeout", "drop", path_prefix="/V2/event/taskResult")
    await client.task_result(task_id)
    assert {e for e, _ in labels} <= TEMPLATES
    assert not any(task_id in e or sn in e for e, _ in labels)
    assert labels[-4:] == [
        ("/V2/event/taskResult/{taskId}", "500"),
        ("/V2/event/taskResult/{taskId}", "timeout"),
        ("/V2/event/taskResult/{taskId}", "error"),
        ("/V2/event/taskResult/{taskId}", "200"),
    ]
    assert labels[0] == ("/V2/auth", "200")
    assert client.requests_made == len(labels) == 6


async def test_retries_are_logged_without_secrets(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client(auth=PASSWORD_AUTH)
    sim.queue_faults("500", path_prefix="/V2/events")
    with structlog.testing.capture_logs() as logs:
        await one_page(client)
    retries = [e for e in logs if e["log_level"] == "warning"]
    assert len(retries) == 1
    assert retries[0]["endpoint"] == "/V2/events"
    assert retries[0]["status"] == 500
    assert retries[0]["code"] == "E50001"
    assert retries[0]["uq"]
    assert not any(secret in repr(logs) for secret in SECRETS)


async def test_a_retry_streak_is_logged_once_and_its_end_once(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    sim.queue_faults("500", "503", "500", path_prefix="/V2/events")
    with structlog.testing.capture_logs() as logs:
        await one_page(client)  # three failures, then the answer
        await one_page(client)
    assert [e["event"] for e in logs] == [
        "upstream call failed, retrying",
        "upstream answering again",
    ]
    assert logs[1]["retries"] == 3


# ---------------------------------------------------------------- login back-off


async def test_a_refused_login_backs_off_from_a_minute_doubling_to_an_hour(
    make_client: MakeClient, sim: Simulator, clock: InstantClock
) -> None:
    # Issue #9: a wrong password was tried on every poll, 720 failed logins an hour.
    client = make_client(auth={"email": "ops@example.com", "password": "not-the-password"})
    logins = lambda: len(seen(sim, "POST", "/V2/auth"))  # noqa: E731
    with structlog.testing.capture_logs() as logs:
        expected_gaps = [60, 120, 240, 480, 960, 1920, 3600, 3600]
        for gap in expected_gaps:
            made = logins()
            with pytest.raises(UpstreamAuthError):
                await one_page(client)
            assert logins() == made + 1
            assert client.login_state.failing
            assert client.login_state.retry_at == pytest.approx(clock.now() + gap)
            # Every call before the back-off ends fails at once, without a login.
            for _ in range(3):
                with pytest.raises(UpstreamAuthError, match="not trying again yet"):
                    await one_page(client)
            clock.advance(gap - 1)
            with pytest.raises(UpstreamAuthError):
                await one_page(client)
            assert logins() == made + 1
            clock.advance(1)
        sim.config.password = "not-the-password"  # the operator fixed the account
        await one_page(client)
    assert client.login_state.failing is False
    assert client.login_state.retry_at is None
    refused = [e for e in logs if e["event"].startswith("upstream login refused")]
    assert len(refused) == 1
    assert refused[0]["log_level"] == "error"
    assert [e["event"] for e in logs].count("upstream login works again") == 1
    assert events_requests(sim)
    assert not any(secret in repr(logs) for secret in SECRETS)
