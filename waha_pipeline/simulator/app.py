"""The fake WAHA HTTP API (waha_api.md) as a Starlette app, plus /_sim control routes.

Why it looks like this: the importer must be tested against the real wire behaviour (status codes, Nest
error bodies, string-or-object chat ids, short pages, inclusive bounds), and benchmarks push ~1M messages
through it, so pages are answered from pre-sorted, pre-encoded items by bisect + slice + join.
Auth, stats and fault injection live in one pure-ASGI middleware (no BaseHTTPMiddleware overhead).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import struct
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from waha_pipeline.simulator.faults import (
    GARBAGE, GARBAGE_BODY, HANG, NO_FAULT, NONE, RATE_LIMIT, RESET, Decision, Faults, html_body,
)
from waha_pipeline.simulator.state import SESSION_STATUSES, SimulatorState
from waha_pipeline.simulator.truth import ground_truth

_JSON = "application/json; charset=utf-8"


def _json(data: Any, status: int = 200, background: BackgroundTask | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON, background=background)


def _raw(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=_JSON)


class BadRequest(Exception):
    """Query validation failure, rendered as Nest's ValidationPipe 400."""


def _bad(messages: list[str]) -> Response:
    return _json({"message": messages, "error": "Bad Request", "statusCode": 400}, 400)


def _int(q: Any, name: str, default: int | None, *, minimum: int | None = None) -> int | None:
    v = q.get(name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        try:
            f = float(v)
        except ValueError:
            raise BadRequest(f"{name} must be a number conforming to the specified constraints") from None
        n = int(f)
    if minimum is not None and n < minimum:
        raise BadRequest(f"{name} must not be less than {minimum}")
    return n


def _bool(q: Any, name: str) -> bool | None:
    v = q.get(name)
    if v is None or v == "":
        return None
    if v in ("true", "True", "1"):
        return True
    if v in ("false", "False", "0"):
        return False
    raise BadRequest(f"{name} must be a boolean value")


def _enum(q: Any, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    v = q.get(name)
    if v is None or v == "":
        return default
    if v not in allowed:
        raise BadRequest(f"{name} must be one of the following values: {', '.join(allowed)}")
    return v


def _stat_kind(path: str) -> str:
    if path.startswith("/api/sessions"):
        return "sessions"
    if path.startswith("/api/") and not path.startswith("/api/server"):
        if "/messages" in path:
            return "messages"
        if "/lids" in path:
            return "lids"
        if "/chats" in path:
            return "chats"
    return "other"


def _session_of(path: str) -> str | None:
    """The session a WAHA path names (/api/sessions/{s}[/...] or /api/{s}/...), else None."""
    if not path.startswith("/api/"):
        return None
    parts = path[5:].split("/", 2)
    if parts[0] == "sessions":
        return (parts[1] or None) if len(parts) > 1 else None
    if parts[0] == "server":
        return None
    return parts[0] or None


TRANSPORT_KEY = "waha_sim.transport"  # server._SimHttpProtocol puts the connection's transport in scope["state"]


def _reason(status: int) -> str:
    return {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}.get(status, "Error")


async def _sleep_unless_gone(receive: Receive, seconds: float) -> tuple[bool, Receive]:
    """Sleep `seconds` unless the client disconnects first. Returns (gone, receive to hand to the app)."""
    buffered: list[Any] = []

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            buffered.append(message)

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
    finally:
        if not watcher.done():
            watcher.cancel()
    if watcher in done:
        return True, receive

    async def replay() -> Any:
        return buffered.pop(0) if buffered else await receive()

    return False, replay


class SimMiddleware:
    """Counts every request, enforces X-Api-Key on /api, applies session plans and injected faults.

    Order for a WAHA request: count -> `down` (503 at once) -> 401 -> session plans tick -> draw the fault
    -> wait at the max_concurrent gate -> latency -> outcome (reset / hang / 429 / 5xx / the real answer).
    With no faults set this is a handful of attribute reads on top of the counters.
    """

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self.app = app
        self.state = state
        self._sem: asyncio.Semaphore | None = None
        self._sem_size: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        state = self.state
        stats = state.stats
        if path.startswith("/_sim"):
            with stats._lock:
                stats.control += 1
            await self.app(scope, receive, send)
            return
        faults = state.faults
        kind = _stat_kind(path)
        cap = faults.max_concurrent
        if cap:
            stats.arrive(kind)
        else:
            stats.begin(kind)
        admitted = not cap
        status_box: list[int | None] = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            if faults.down:
                stats.fault("down")
                await _json({"message": "Service Unavailable", "error": "Service Unavailable", "statusCode": 503},
                            503)(scope, receive, send_wrapper)
                return
            if path.startswith("/api") and state.api_key is not None and not self._authorized(scope):
                await _json({"message": "Unauthorized", "statusCode": 401}, 401)(scope, receive, send_wrapper)
                return
            if (state.plans or state.delete_when) and (name := _session_of(path)) is not None:
                state.tick(name)
            if faults.random:
                decision = state.decider.decide(faults, scope["method"], path, scope.get("query_string", b""),
                                                kind in faults.only_kinds)
            elif faults.latency_ms:
                decision = Decision(NONE, faults.latency_ms / 1000.0)
            else:
                decision = NO_FAULT
            if cap:
                if self._sem is None or self._sem_size != cap:
                    self._sem, self._sem_size = asyncio.Semaphore(cap), cap
                async with self._sem:
                    stats.admit()
                    admitted = True
                    await self._serve(decision, faults, scope, receive, send_wrapper, status_box)
            else:
                await self._serve(decision, faults, scope, receive, send_wrapper, status_box)
        finally:
            if not admitted:
                stats.admit()
            stats.end(status_box[0])

    async def _serve(self, d: Decision, faults: Faults, scope: Scope, receive: Receive, send: Send,
                     status_box: list[int | None]) -> None:
        if d.delay_s:
            await asyncio.sleep(d.delay_s)
        outcome = d.outcome
        if outcome == NONE:
            await self.app(scope, receive, send)
            return
        stats = self.state.stats
        if outcome == RESET:
            stats.fault("reset")
            status_box[0] = None
            await self._reset(scope)
        elif outcome == HANG:
            stats.fault("hang")
            gone, receive = await _sleep_unless_gone(receive, faults.hang_s)
            if gone:  # the client gave up (its read timeout): nobody to answer
                status_box[0] = None
                return
            await self.app(scope, receive, send)
        elif outcome == GARBAGE:
            stats.fault("garbage")
            await Response(GARBAGE_BODY, status_code=200, media_type="text/html; charset=utf-8")(scope, receive, send)
        elif outcome == RATE_LIMIT:
            stats.fault("429")
            response = _json({"statusCode": 429, "message": "ThrottlerException: Too Many Requests"}, 429)
            response.headers["Retry-After"] = str(faults.retry_after_s)
            await response(scope, receive, send)
        else:
            stats.fault("5xx")
            if d.html:
                stats.fault("html")
                await Response(html_body(d.status), status_code=d.status,
                               media_type="text/html; charset=utf-8")(scope, receive, send)
            else:
                await _json(self._error_body(d.status, scope), d.status)(scope, receive, send)

    def _error_body(self, status: int, scope: Scope) -> dict:
        if status == 500:  # Nest AllExceptionsFilter for a non-HTTP exception (waha_api.md 9)
            return {"statusCode": 500, "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
                    "exception": {"message": "injected fault (WAHA simulator)", "name": "Error"},
                    "request": {"path": scope["path"], "method": scope["method"], "body": {},
                                "query": dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))},
                    "version": {"version": self.state.version, "engine": self.state.engine, "tier": "CORE"}}
        return {"message": _reason(status), "error": _reason(status), "statusCode": status}

    @staticmethod
    async def _reset(scope: Scope) -> None:
        """Close the TCP connection with an RST and no HTTP response. Needs the transport that
        server._SimHttpProtocol exposes; without it (another ASGI server) raise, which is the nearest thing."""
        transport = (scope.get("state") or {}).get(TRANSPORT_KEY)
        if transport is None:
            raise ConnectionResetError("injected connection reset (no transport to abort)")
        if not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # linger 0: close() sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # let connection_lost mark the request disconnected, so uvicorn does not try to answer 500 itself
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _authorized(self, scope: Scope) -> bool:
        expected = self.state.api_key or ""
        for k, v in scope["headers"]:
            if k == b"x-api-key":
                return hmac.compare_digest(v.decode("latin-1"), expected)
        qs = scope.get("query_string", b"")
        if b"x-api-key" in qs:
            got = parse_qs(qs.decode("latin-1")).get("x-api-key", [""])[0]
            return hmac.compare_digest(got, expected)
        return False


def create_app(state: SimulatorState) -> Starlette:
    """The WAHA API routes of waha_api.md over `state`, wrapped in the stats/auth/fault middleware."""

    def session_info(name: str) -> dict:
        sess = state.dataset.sessions[name]
        status = state.statuses[name]
        config: dict = {"webhooks": [], "debug": False}
        if sess.tenant_id is not None:
            config["metadata"] = {"tenant_id": sess.tenant_id}
        return {
            "name": name, "status": status, "config": config, "me": me_info(name),
            "presence": None, "timestamps": {"activity": state.dataset.anchor * 1000},
            "assignedWorker": None, "engine": {"engine": state.engine},
        }

    def me_info(name: str) -> dict | None:
        if state.statuses[name] != "WORKING":
            return None
        sess = state.dataset.sessions[name]
        return {"id": f"{sess.me_phone}@c.us", "lid": f"{sess.me_lid}@lid",
                "jid": f"{sess.me_phone}:7@s.whatsapp.net", "pushName": sess.me_push_name}

    def running(name: str) -> Response | None:
        """None when the session can serve data, else WAHA's 404 / 422 response."""
        status = state.statuses.get(name)
        if status is None or status == "STOPPED" or name in state.deleted:
            return _json({"message": f"We didn't find a session with name '{name}'.\n"
                                     f"Please start it first by using POST /api/sessions/{name}/start request",
                          "error": "Not Found", "statusCode": 404}, 404)
        if status != "WORKING":
            return _json({"error": "Session status is not as expected. Try again later or restart the session",
                          "session": name, "status": status, "expected": ["WORKING"]}, 422)
        return None

    async def ping(request: Request) -> Response:
        return _json({"message": "pong"})

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "info": {}, "error": {}, "details": {}})

    async def version(request: Request) -> Response:
        return _json({"version": state.version, "engine": state.engine, "tier": "CORE", "browser": None,
                      "platform": "linux/x64", "worker": {"id": None}})

    async def list_sessions(request: Request) -> Response:
        show_all = _bool(request.query_params, "all") or False
        names = [n for n in state.dataset.sessions
                 if n not in state.deleted and (show_all or state.statuses[n] != "STOPPED")]
        return _json([session_info(n) for n in names])

    async def get_session(request: Request) -> Response:
        name = request.path_params["session"]
        if name not in state.dataset.sessions or name in state.deleted:
            return _json({"message": "Session not found", "error": "Not Found", "statusCode": 404}, 404)
        return _json(session_info(name))

    async def get_me(request: Request) -> Response:
        name = request.path_params["session"]
        if name not in state.dataset.sessions or name in state.deleted:
            return _json({"message": "Session not found", "error": "Not Found", "statusCode": 404}, 404)
        return _json(me_info(name))

    async def list_chats(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        q = request.query_params
        limit = _int(q, "limit", None, minimum=0)
        offset = _int(q, "offset", 0, minimum=0) or 0
        index = state.chat_index[name]
        by = _enum(q, "sortBy", ("conversationTimestamp", "id", "name"), None)
        order = _enum(q, "sortOrder", ("desc", "asc"), None)
        if by is None:
            by, default_order = index.default_sort
            order = order or default_order
        order = order or ("asc" if by == "id" else "desc")
        items = (index.desc if order == "desc" else index.asc)[by or "id"]
        page = items[offset:] if not limit else items[offset: offset + limit]
        return _raw(b"[" + b",".join(page) + b"]")

    spec = state.dataset.spec
    webjs = spec.engine == "webjs"
    ignore_offset, ignore_lte = spec.ignore_offset, spec.ignore_lte

    async def list_messages(request: Request) -> Response:
        """The store's window sliced by limit/offset FIRST, then the rows the engine drops (GOWS/NOWEB reactions,
        poll votes, protocol rows; WEBJS rows `result.filter(Boolean)` removes) left out: a page can be short or
        empty while later offsets still hold messages. WEBJS sorts newest-first whatever sortOrder says
        (WebjsClientCore.getMessages) and omits `timestamp` when `filter.timestamp.gte` is sent (WAHA issue #2024)."""
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        q = request.query_params
        limit = _int(q, "limit", 10, minimum=0)
        if not limit:  # controller default 10; WEBJS turns a falsy limit into Infinity in the page script
            limit = 10 if not webjs or limit is None else 1 << 62
        offset = 0 if ignore_offset else (_int(q, "offset", 0, minimum=0) or 0)
        _bool(q, "downloadMedia")
        _enum(q, "sortBy", ("timestamp", "messageTimestamp"), "timestamp")
        order = _enum(q, "sortOrder", ("desc", "asc"), "desc")
        if webjs:
            order = "desc"
        gte = _int(q, "filter.timestamp.gte", None)
        lte = None if ignore_lte else _int(q, "filter.timestamp.lte", None)
        from_me = _bool(q, "filter.fromMe")
        chat_id = request.path_params["chat_id"]
        chat = state.dataset.sessions[name].find_chat(chat_id)
        state.stats.count_chat(chat.id if chat is not None else chat_id)
        if chat is None:  # store engines answer an unknown chat with an empty list
            return _raw(b"[]")
        items, lo, hi = chat.window(gte, lte, from_me)
        if order == "asc":
            page = items[lo + offset: min(hi, lo + offset + limit)]
        else:
            end = hi - offset
            page = items[max(lo, end - limit): end][::-1] if end > lo else []
        if webjs and gte is not None:
            blobs = [e.alt or e.blob for e in page if e.blob is not None]
        else:
            blobs = [e.blob for e in page if e.blob is not None]  # dropped AFTER slicing: short or empty page
        return _raw(b"[" + b",".join(blobs) + b"]")  # type: ignore[arg-type]

    async def list_lids(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        q = request.query_params
        limit = _int(q, "limit", 100, minimum=0) or 100
        offset = _int(q, "offset", 0, minimum=0) or 0
        lids = state.dataset.sessions[name].lids
        keys = sorted(lids)[offset: offset + limit]
        return _json([{"lid": f"{k}@lid", "pn": f"{lids[k]}@c.us"} for k in keys])

    async def count_lids(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        return _json({"count": len(state.dataset.sessions[name].lids)})

    async def get_lid(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        lid = request.path_params["lid"].split("@", 1)[0]
        pn = state.dataset.sessions[name].lids.get(lid)
        return _json({"lid": f"{lid}@lid", "pn": f"{pn}@c.us" if pn else None})

    async def get_pn(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        phone = request.path_params["phone"].split("@", 1)[0].lstrip("+")
        lid = state.dataset.sessions[name].pn_to_lid.get(phone)
        return _json({"lid": f"{lid}@lid" if lid else None, "pn": f"{phone}@c.us"})

    # ---- control plane (/_sim), kept apart from the WAHA API like moto's /moto-api
    async def sim_stats(request: Request) -> Response:
        return _json(state.stats.snapshot())

    async def sim_reset_stats(request: Request) -> Response:
        state.stats.reset()
        return _json({"ok": True})

    async def _body(request: Request) -> dict:
        raw = await request.body()
        body = orjson.loads(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body

    def _count(body: dict, key: str) -> int | None:
        v = body.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{key} must be a non-negative integer")
        return v

    def _unknown_session(name: str) -> Response:
        return _json({"message": f"unknown session {name!r}", "statusCode": 404}, 404)

    async def sim_set_status(request: Request) -> Response:
        """{"status": S, "after_requests"?: N, "for_requests"?: M}: S now, or from the (N+1)th request to the
        session on; WORKING again after M requests in S."""
        name = request.path_params["name"]
        if name not in state.dataset.sessions:
            return _unknown_session(name)
        try:
            body = await _body(request)
            if "status" not in body:
                raise ValueError("missing 'status'")
            state.schedule_status(name, body["status"], _count(body, "after_requests") or 0,
                                  _count(body, "for_requests"))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"message": str(exc) or f"status must be one of {SESSION_STATUSES}",
                          "statusCode": 400}, 400)
        return _json({**session_info(name), "deleted": name in state.deleted, "plans": _plans(name)})

    def _plans(name: str) -> list[dict]:
        base = state.session_requests.get(name, 0)
        return [{"after_requests": due - base - 1, "action": action, **({"status": arg} if arg else {})}
                for due, action, arg in state.plans.get(name, [])]

    async def sim_delete_session(request: Request) -> Response:
        """{"after_requests"?: N}: the session is gone from WAHA now, or from the (N+1)th request to it on."""
        name = request.path_params["name"]
        if name not in state.dataset.sessions:
            return _unknown_session(name)
        try:
            state.delete_session(name, _count(await _body(request), "after_requests"))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"message": str(exc), "statusCode": 400}, 400)
        return _json({"name": name, "deleted": name in state.deleted, "plans": _plans(name)})

    async def sim_restore_session(request: Request) -> Response:
        """{"status"?: S}: undo a deletion (and a pending one); optionally set the status."""
        name = request.path_params["name"]
        if name not in state.dataset.sessions:
            return _unknown_session(name)
        try:
            state.restore_session(name, (await _body(request)).get("status"))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"message": str(exc), "statusCode": 400}, 400)
        return _json({**session_info(name), "deleted": False, "plans": _plans(name)})

    async def sim_faults(request: Request) -> Response:
        """GET: the active fault set. POST: patch it with the body's fields (?mode=replace: the body on top of
        the defaults). Installing a set restarts the draw counters."""
        if request.method == "POST":
            mode = request.query_params.get("mode", "patch")
            try:
                if mode not in ("patch", "replace"):
                    raise ValueError("mode must be patch or replace")
                body = await _body(request)
                state.set_faults(Faults.from_dict(body, None if mode == "replace" else state.faults))
            except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                return _json({"message": str(exc), "statusCode": 400}, 400)
        return _json(state.faults.to_dict())

    async def sim_add_chat(request: Request) -> Response:
        """{"id": ID (string or id object), "name"?: N}: a chat with any id, served by /chats."""
        name = request.path_params["name"]
        if name not in state.dataset.sessions:
            return _unknown_session(name)
        try:
            body = await _body(request)
            if "id" not in body:
                raise ValueError("missing 'id'")
            chat = state.add_chat(name, body["id"], body.get("name"))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"message": str(exc), "statusCode": 400}, 400)
        return _json({"id": chat.id, "kind": chat.kind, "name": chat.name})

    async def sim_add_message(request: Request) -> Response:
        """{"chat_id": C, "raw": {...}, "content_type"?: T, "defect"?: R, "ts"?: S, "from_me"?: B,
        "push_name"?: P}: serve `raw` in chat C; the other fields are the truth's facts."""
        name = request.path_params["name"]
        if name not in state.dataset.sessions:
            return _unknown_session(name)
        try:
            body = await _body(request)
            unknown = set(body) - {"chat_id", "raw", "content_type", "defect", "ts", "from_me", "push_name"}
            if unknown or "chat_id" not in body or "raw" not in body:
                raise ValueError(f"need chat_id and raw; unknown field(s) {sorted(unknown)}")
            facts = {k: body[k] for k in ("ts", "from_me", "push_name") if body.get(k) is not None}
            entry = state.add_message(name, body["chat_id"], body["raw"],
                                      content_type=body.get("content_type") or "text", defect=body.get("defect"),
                                      **facts)
        except KeyError as exc:
            return _json({"message": str(exc.args[0] if exc.args else exc), "statusCode": 404}, 404)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"message": str(exc), "statusCode": 400}, 400)
        return _json({"external_id": entry.external_id, "ts": entry.ts, "defect": entry.defect})

    async def sim_grow(request: Request) -> Response:
        """{"new_messages"?: N, "new_chats"?: C, "late_messages"?: L, "at"?: T, "seed"?: S, "into_chats"?: K,
        "since"?: F}: more history, generated like the rest (SimulatorState.grow); answers what was added. Runs on
        the serving loop, so no WAHA request sees a chat half-grown."""
        name = request.path_params["name"]
        if name not in state.dataset.sessions:
            return _unknown_session(name)
        fields = ("new_messages", "new_chats", "late_messages", "at", "seed", "into_chats", "since")
        try:
            body = await _body(request)
            unknown = set(body) - set(fields)
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}; known: {', '.join(fields)}")
            args = {k: body[k] for k in fields if body.get(k) is not None}
            result = state.grow(name, **args)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"message": str(exc), "statusCode": 400}, 400)
        return _json(result)

    async def sim_down(request: Request) -> Response:
        """{"for_s": S}: close the listening socket and every open connection, reopen after S seconds.
        Over HTTP a duration is required: nothing could reach /_sim to bring it back."""
        listener = state.listener
        if listener is None:
            return _json({"message": "not served by run_in_thread/serve_forever: use the 'down' fault (503)",
                          "statusCode": 501}, 501)
        try:
            body = await _body(request)
            for_s = body.get("for_s")
            if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or for_s <= 0:
                raise ValueError("for_s (seconds > 0) is required")
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _json({"message": str(exc), "statusCode": 400}, 400)
        return _json({"down": True, "for_s": for_s},
                     background=BackgroundTask(listener.go_down, float(for_s)))

    async def sim_truth(request: Request) -> Response:
        q = request.query_params
        session = q.get("session") or next(iter(state.dataset.sessions))
        if session not in state.dataset.sessions:
            return _json({"message": f"unknown session {session!r}", "statusCode": 404}, 404)
        end = _int(q, "window_end", state.dataset.anchor)
        assert end is not None
        truth = ground_truth(
            state.dataset, session,
            window_start=_int(q, "window_start", None), window_end=end,
            timeout_minutes=_int(q, "timeout_minutes", 30) or 30,
            plan_time=_int(q, "plan_time", end),
            include_groups=_bool(q, "include_groups") or False,
            tenant_id=q.get("tenant_id") or "default",
        )
        return _json(truth)

    async def sim_dataset(request: Request) -> Response:
        ds = state.dataset
        return _json({"anchor": ds.anchor, "seed": ds.spec.seed, "engine": ds.spec.engine,
                      "sessions": {n: {**s.counts(), "status": state.statuses[n], "tenant_id": s.tenant_id,
                                       "deleted": n in state.deleted, "plans": _plans(n)}
                                   for n, s in ds.sessions.items()}})

    routes = [
        Route("/ping", ping),
        Route("/health", health),
        Route("/api/server/version", version),
        Route("/api/sessions", list_sessions),
        Route("/api/sessions/{session}", get_session),
        Route("/api/sessions/{session}/me", get_me),
        Route("/api/{session}/chats", list_chats),
        Route("/api/{session}/chats/{chat_id}/messages", list_messages),
        Route("/api/{session}/lids", list_lids),
        Route("/api/{session}/lids/count", count_lids),
        Route("/api/{session}/lids/pn/{phone}", get_pn),
        Route("/api/{session}/lids/{lid}", get_lid),
        Route("/_sim/stats", sim_stats),
        Route("/_sim/reset-stats", sim_reset_stats, methods=["POST"]),
        Route("/_sim/sessions/{name}/status", sim_set_status, methods=["POST"]),
        Route("/_sim/sessions/{name}/delete", sim_delete_session, methods=["POST"]),
        Route("/_sim/sessions/{name}/restore", sim_restore_session, methods=["POST"]),
        Route("/_sim/sessions/{name}/chats", sim_add_chat, methods=["POST"]),
        Route("/_sim/sessions/{name}/messages", sim_add_message, methods=["POST"]),
        Route("/_sim/sessions/{name}/grow", sim_grow, methods=["POST"]),
        Route("/_sim/down", sim_down, methods=["POST"]),
        Route("/_sim/faults", sim_faults, methods=["GET", "POST"]),
        Route("/_sim/truth", sim_truth),
        Route("/_sim/dataset", sim_dataset),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json({"message": f"Cannot {request.method} {request.url.path}", "error": "Not Found",
                      "statusCode": 404}, 404)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _bad([str(exc)])

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _json({"message": f"Cannot {request.method} {request.url.path}", "error": "Not Found",
                      "statusCode": 404}, 404)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed,
                                                       BadRequest: bad_request})
    app.add_middleware(SimMiddleware, state=state)
    return app
