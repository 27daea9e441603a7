"""Fault injection, observed from a real httpx client over loopback (issue: survive a flaky WAHA).

One simulator for the module; every test starts from no faults, no plans, all sessions back, zeroed stats.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from waha_pipeline.simulator import DatasetSpec, Faults, SessionSpec, SimulatorHandle, run_in_thread
from waha_pipeline.simulator.faults import add_fault_arguments, canonical_query, faults_from_args

from .conftest import ANCHOR, ServerWaits

SPEC = DatasetSpec(seed=5, chats=30, target_messages=200,
                   sessions=(SessionSpec("demo"), SessionSpec("other", chats=16, target_messages=40)))
NOT_EXPECTED = {"error": "Session status is not as expected. Try again later or restart the session",
                "session": "demo", "status": "SCAN_QR_CODE", "expected": ["WORKING"]}


@pytest.fixture(scope="module")
def fsim() -> Iterator[SimulatorHandle]:
    with run_in_thread(SPEC, anchor=ANCHOR) as handle:
        yield handle


@pytest.fixture()
def h(fsim: SimulatorHandle) -> Iterator[SimulatorHandle]:
    def clean() -> None:
        fsim.clear_faults()
        fsim.state.cancel_schedules()
        for name in ("demo", "other"):
            fsim.restore_session(name, "WORKING")
        if fsim.is_down:
            fsim.up()
        fsim.reset_stats()

    clean()
    yield fsim
    clean()


@pytest.fixture()
def c(h: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=h.base_url, timeout=10) as client:
        yield client


def msgs(session: str = "demo", chat: str = "1@c.us") -> str:
    return f"/api/{session}/chats/{quote(chat, safe='')}/messages"


def outcome(client: httpx.Client, url: str, **params: object) -> str:
    """'reset' or the status code, for sequence comparisons."""
    try:
        return str(client.get(url, params=params).status_code)
    except httpx.TransportError:
        return "reset"


def test_server_errors_json_and_html(h: SimulatorHandle, c: httpx.Client) -> None:
    h.set_faults(error_rate=1.0, html_error_rate=0.5)
    codes: Counter[int] = Counter()
    html = 0
    for i in range(60):
        r = c.get("/api/demo/chats", params={"limit": 1, "offset": i})
        codes[r.status_code] += 1
        if r.headers["content-type"].startswith("text/html"):
            html += 1
            assert r.text == f"<html><body><h1>{r.status_code} {r.reason_phrase}</h1></body></html>"
        else:
            body = r.json()
            assert body["statusCode"] == r.status_code
            if r.status_code == 500:  # Nest AllExceptionsFilter shape
                assert {"timestamp", "exception", "request", "version"} <= set(body)
    assert set(codes) == {500, 502, 503}
    assert 15 <= html <= 45
    stats = h.stats()
    assert stats["faults"]["5xx"] == 60 and stats["faults"]["html"] == html
    assert stats["by_status"] == {str(k): v for k, v in sorted(codes.items())}


def test_rate_limit_with_retry_after(h: SimulatorHandle, c: httpx.Client) -> None:
    h.set_faults(rate_limit_rate=1.0, retry_after_s=7)
    r = c.get(msgs())
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["statusCode"] == 429
    assert h.stats()["faults"]["429"] == 1


def test_hang_times_out_a_short_client_and_answers_a_patient_one(h: SimulatorHandle, c: httpx.Client,
                                                                  server_waits: ServerWaits) -> None:
    busiest = max(h.state.dataset.sessions["demo"].chats, key=lambda chat: sum(not e.hidden for e in chat.entries))
    assert len(busiest.entries) >= 10
    h.set_faults(hang_rate=1.0, hang_s=60.0)  # far beyond the short client's read timeout, however slow the machine
    with pytest.raises(httpx.ReadTimeout):
        c.get(msgs(), timeout=0.2)
    h.set_faults(hang_rate=1.0, hang_s=0.5)
    r = c.get(msgs(chat=busiest.id), params={"limit": 3}, timeout=30)
    assert r.status_code == 200 and 1 <= len(r.json()) <= 3  # rows the engine drops may shorten it
    assert server_waits.hangs == [60.0, 0.5]  # each hang held its request for hang_s (or until the client left)
    assert h.stats()["faults"]["hang"] == 2


def test_reset_is_a_transport_error_without_response(h: SimulatorHandle, c: httpx.Client) -> None:
    h.set_faults(reset_rate=1.0)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        c.get("/api/demo/lids")
    assert c.get("/_sim/stats").status_code == 200  # the server lives on
    stats = h.stats()
    assert stats["faults"]["reset"] == 1 and stats["lids"] == 1
    assert stats["by_status"] == {}  # no HTTP status was ever sent
    h.clear_faults()
    assert c.get("/api/demo/lids").status_code == 200


def test_latency_with_jitter_on_every_waha_kind_and_never_on_control_routes(h: SimulatorHandle,
                                                                            server_waits: ServerWaits) -> None:
    h.set_faults(latency_ms=100, jitter_ms=40)
    with httpx.Client(base_url=h.base_url, timeout=10) as c:
        for url in ("/api/sessions", "/api/sessions", "/api/sessions", "/api/demo/chats", msgs(), "/api/demo/lids"):
            assert c.get(url).status_code == 200
        delays = list(server_waits.sleeps)
        assert c.get("/_sim/stats").status_code == 200
        assert c.get("/_sim/faults").status_code == 200
    assert len(delays) == 6 and all(0.1 <= d < 0.14 for d in delays), delays  # latency + U(0, jitter)
    assert len(set(delays[:3])) == 3  # the same request asked again draws its jitter afresh
    assert server_waits.sleeps == delays, "control routes are never delayed"


def test_beyond_the_concurrency_cap_requests_wait_and_are_never_refused(h: SimulatorHandle) -> None:
    h.set_faults(latency_ms=200, max_concurrent=3)
    statuses: list[int] = []

    def one(i: int) -> None:
        statuses.append(httpx.get(f"{h.base_url}{msgs()}", params={"offset": i}, timeout=30).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = h.stats()
    assert statuses == [200] * 12  # beyond the cap requests wait; they are never refused
    assert stats["max_in_flight"] == 3 and stats["max_waiting"] >= 1 and stats["messages"] == 12
    assert stats["in_flight"] == 0 and stats["waiting"] == 0


def test_same_seed_same_faults_different_seed_differs(h: SimulatorHandle, c: httpx.Client) -> None:
    requests = [(msgs(chat=f"{i % 7}@c.us"), {"limit": 5, "offset": i % 3}) for i in range(60)]

    def run(seed: int | None, order: list[int] | None = None) -> list[str]:
        h.set_faults(Faults(error_rate=0.3, rate_limit_rate=0.2, reset_rate=0.1, seed=seed))
        return [outcome(c, requests[i][0], **requests[i][1]) for i in (order or range(len(requests)))]

    first = run(None)
    assert run(None) == first  # replays exactly
    assert run(SPEC.seed) == first  # None means the dataset seed
    assert run(SPEC.seed + 1) != first
    assert {"200", "429", "reset"} <= set(first) and set(first) & {"500", "502", "503"}
    # the same request asked again gets a fresh draw: repeats of one key do not all share one fate
    same = [outcome(c, msgs(chat="3@c.us"), limit=5) for _ in range(30)]
    assert len(set(same)) > 1
    # order does not matter for distinct requests: each key's n-th occurrence has a fixed fate
    distinct = [(msgs(chat=f"{i}@c.us"), {"limit": 2}) for i in range(40)]
    h.set_faults(Faults(error_rate=0.5))
    forward = {u: outcome(c, u, **p) for u, p in distinct}
    h.set_faults(Faults(error_rate=0.5))
    backward = {u: outcome(c, u, **p) for u, p in reversed(distinct)}
    assert forward == backward and len(set(forward.values())) > 1


def test_query_order_and_api_key_do_not_change_the_draw() -> None:
    assert canonical_query(b"b=2&a=1&x-api-key=secret") == canonical_query(b"a=1&b=2") == "a=1&b=2"


def test_rates_roughly_honoured(h: SimulatorHandle, c: httpx.Client) -> None:
    h.set_faults(error_rate=0.2, rate_limit_rate=0.1, hang_rate=0.05, hang_s=0.0)
    n = 400
    got = Counter(outcome(c, msgs(), limit=1, offset=i) for i in range(n))
    errors = got["500"] + got["502"] + got["503"]
    assert 0.12 * n <= errors <= 0.28 * n
    assert 0.04 * n <= got["429"] <= 0.16 * n
    faults = h.stats()["faults"]
    assert faults["5xx"] == errors and faults["429"] == got["429"]
    assert 0.01 * n <= faults["hang"] <= 0.10 * n and got["200"] == n - errors - got["429"]


def test_only_kinds_and_control_routes_never_faulted(h: SimulatorHandle, c: httpx.Client) -> None:
    h.set_faults(error_rate=1.0, only_kinds=("messages",))
    assert c.get(msgs()).status_code in (500, 502, 503)
    assert c.get("/api/demo/chats").status_code == 200
    assert c.get("/api/sessions").status_code == 200
    h.set_faults(Faults(error_rate=0.5, reset_rate=0.5, only_kinds=("sessions", "chats", "messages", "lids",
                                                                     "other")))
    for _ in range(20):
        assert c.get("/_sim/stats").status_code == 200
        assert c.get("/_sim/faults").status_code == 200
    h.set_faults(Faults(down=True))
    r = c.get("/api/demo/chats")
    assert r.status_code == 503 and r.json()["statusCode"] == 503
    assert c.get("/api/sessions").status_code == 503
    assert c.get("/_sim/dataset").status_code == 200
    assert h.stats()["faults"]["down"] == 2


def test_scheduled_status_flip_and_back(h: SimulatorHandle, c: httpx.Client) -> None:
    h.schedule_status("demo", "SCAN_QR_CODE", after_requests=2, for_requests=3)
    seen = []
    for _ in range(6):
        r = c.get("/api/demo/chats", params={"limit": 1})
        seen.append(r.status_code)
        if r.status_code == 422:
            assert r.json() == NOT_EXPECTED
    assert seen == [200, 200, 422, 422, 422, 200]
    assert c.get("/api/other/chats").status_code == 200  # other sessions' requests neither count nor change
    # over HTTP, with GET /api/sessions/{name} counting as a request to the session
    r = c.post("/_sim/sessions/demo/status", json={"status": "FAILED", "after_requests": 1})
    assert r.status_code == 200 and r.json()["status"] == "WORKING"
    assert c.get("/api/sessions/demo").json()["status"] == "WORKING"
    assert c.get("/api/sessions/demo").json()["status"] == "FAILED"
    assert c.get(msgs()).json()["status"] == "FAILED"
    r = c.post("/_sim/sessions/demo/status", json={"status": "STOPPED"})
    assert c.get(msgs()).status_code == 404
    assert c.post("/_sim/sessions/demo/status", json={"status": "WORKING", "after_requests": -1}).status_code == 400
    assert c.post("/_sim/sessions/nope/status", json={"status": "WORKING"}).status_code == 404


def test_delete_after_requests_and_restore(h: SimulatorHandle, c: httpx.Client) -> None:
    h.delete_session("demo", after_requests=2)
    assert [c.get(msgs()).status_code for _ in range(2)] == [200, 200]
    r = c.get("/api/demo/chats")
    assert r.status_code == 404 and r.json() == {
        "message": "We didn't find a session with name 'demo'.\nPlease start it first by using "
                   "POST /api/sessions/demo/start request", "error": "Not Found", "statusCode": 404}
    r = c.get("/api/sessions/demo")
    assert r.status_code == 404 and r.json()["message"] == "Session not found"
    assert [s["name"] for s in c.get("/api/sessions", params={"all": "true"}).json()] == ["other"]
    assert c.post("/_sim/sessions/demo/restore").status_code == 200
    assert c.get("/api/demo/chats").status_code == 200
    assert [s["name"] for s in c.get("/api/sessions").json()] == ["demo", "other"]
    # over HTTP: now, and a pending deletion undone by restore
    assert c.post("/_sim/sessions/demo/delete").json()["deleted"] is True
    assert c.get("/api/demo/lids/count").status_code == 404
    c.post("/_sim/sessions/demo/restore")
    assert c.post("/_sim/sessions/demo/delete", json={"after_requests": 1}).json()["deleted"] is False
    c.post("/_sim/sessions/demo/restore")
    assert [c.get("/api/demo/lids/count").status_code for _ in range(3)] == [200, 200, 200]


def test_delete_when_a_condition_holds(h: SimulatorHandle, c: httpx.Client) -> None:
    ready = threading.Event()
    h.delete_session("demo", when=ready.is_set)
    assert [c.get(msgs()).status_code for _ in range(2)] == [200, 200]
    assert c.get("/api/other/chats").status_code == 200  # other sessions are not affected
    ready.set()
    assert [c.get(msgs()).status_code for _ in range(2)] == [404, 404]
    h.restore_session("demo")
    assert c.get(msgs()).status_code == 200


def test_down_refuses_connections_until_up(h: SimulatorHandle, c: httpx.Client,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert c.get("/api/sessions").status_code == 200  # a pooled keep-alive connection exists
    h.down()
    # The pooled connection is aborted: refused when the client saw the abort before reusing it, reset when the
    # request went out first (the abort completes on the server's loop, in its own time).
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        c.get("/api/sessions")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{h.base_url}/_sim/stats")  # nothing listens: control routes too
    h.up()
    assert c.get("/api/sessions").status_code == 200

    # /_sim/down with for_s: down after the answer, up again by its own timer. The listener's transitions are
    # observed through events, and the timer's go_up is held until the test has seen the server down.
    listener = h.state.listener
    went_down, timer_fired, came_up, release = (threading.Event() for _ in range(4))
    go_down, go_up = listener.go_down, listener.go_up

    async def observed_down(for_s: float | None = None) -> None:
        await go_down(for_s)
        went_down.set()

    async def held_up() -> None:
        timer_fired.set()
        await asyncio.to_thread(release.wait, 60)
        await go_up()
        came_up.set()

    monkeypatch.setattr(listener, "go_down", observed_down)
    monkeypatch.setattr(listener, "go_up", held_up)
    r = c.post("/_sim/down", json={"for_s": 0.2})
    assert r.status_code == 200 and r.json() == {"down": True, "for_s": 0.2}
    assert went_down.wait(60) and h.is_down
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        c.get("/api/sessions")  # the POST's pooled connection was aborted, as above
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{h.base_url}/api/sessions")  # the listening socket is closed
    assert timer_fired.wait(60), "the for_s timer brings the server back"
    release.set()
    assert came_up.wait(60)
    assert c.get("/api/sessions").status_code == 200 and not h.is_down
    assert c.post("/_sim/down", json={}).status_code == 400  # over HTTP a duration is required


def test_faults_control_api(h: SimulatorHandle, c: httpx.Client) -> None:
    assert c.get("/_sim/faults").json() == Faults().to_dict()
    got = c.post("/_sim/faults", json={"error_rate": 0.2, "only_kinds": ["messages"]}).json()
    assert got["error_rate"] == 0.2 and got["only_kinds"] == ["messages"]
    got = c.post("/_sim/faults", json={"latency_ms": 5}).json()  # a patch keeps the rest
    assert got["error_rate"] == 0.2 and got["latency_ms"] == 5.0
    got = c.post("/_sim/faults", params={"mode": "replace"}, json={"hang_rate": 0.1}).json()
    assert got == {**Faults().to_dict(), "hang_rate": 0.1}
    assert h.faults == Faults(hang_rate=0.1)
    for bad in ({"error_rate": 0.7, "reset_rate": 0.5}, {"nonsense": 1}, {"only_kinds": ["bogus"]},
                {"error_rate": 2}, {"max_concurrent": -1}, {"down": "yes"}):
        assert c.post("/_sim/faults", json=bad).status_code == 400, bad
    assert c.get("/_sim/faults").json()["hang_rate"] == 0.1  # a rejected set changes nothing
    f = Faults(latency_ms=3, jitter_ms=2, max_concurrent=4, error_rate=0.1, html_error_rate=0.5,
               rate_limit_rate=0.1, retry_after_s=2, hang_rate=0.1, hang_s=4, reset_rate=0.1,
               only_kinds=("chats",), down=True, seed=9)
    assert Faults.from_dict(f.to_dict()) == f
    with pytest.raises(ValueError):
        h.set_faults(error_rate=0.9, rate_limit_rate=0.2)


def test_start_up_faults_and_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    args = parser.parse_args(["--latency-ms", "100", "--jitter-ms", "10", "--max-concurrent", "50",
                              "--error-rate", "0.1", "--html-error-rate", "0.5", "--rate-limit-rate", "0.05",
                              "--retry-after-s", "2", "--hang-rate", "0.01", "--hang-s", "20",
                              "--reset-rate", "0.02", "--fault-kinds", "messages,chats", "--fault-seed", "4"])
    assert faults_from_args(args) == Faults(latency_ms=100, jitter_ms=10, max_concurrent=50, error_rate=0.1,
                                            html_error_rate=0.5, rate_limit_rate=0.05, retry_after_s=2,
                                            hang_rate=0.01, hang_s=20, reset_rate=0.02,
                                            only_kinds=("messages", "chats"), seed=4)
    assert faults_from_args(parser.parse_args([])) == Faults()
    for bad in (["--error-rate", "1.5"], ["--fault-kinds", "bogus"], ["--max-concurrent", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    spec = DatasetSpec(seed=5, chats=16, target_messages=40, sessions=(SessionSpec("demo"),))
    with run_in_thread(spec, anchor=ANCHOR, faults=Faults(rate_limit_rate=1.0)) as handle:
        assert httpx.get(f"{handle.base_url}/api/demo/chats").status_code == 429
