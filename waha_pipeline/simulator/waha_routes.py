"""The WAHA API routes of waha_api.md over a SimulatorState.

The importer must be tested against the real wire behaviour (status codes, Nest error bodies, string-or-object
chat ids, short pages, inclusive bounds), and benchmarks push ~1M messages through these routes, so pages are
answered from pre-sorted, pre-encoded items by bisect + slice + join.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from waha_pipeline.simulator.http_common import json_response, query_bool, query_enum, query_int, raw_response
from waha_pipeline.simulator.state import SimulatorState


def session_info(state: SimulatorState, name: str) -> dict:
    sess = state.dataset.sessions[name]
    status = state.statuses[name]
    config: dict = {"webhooks": [], "debug": False}
    if sess.tenant_id is not None:
        config["metadata"] = {"tenant_id": sess.tenant_id}
    return {
        "name": name, "status": status, "config": config, "me": me_info(state, name),
        "presence": None, "timestamps": {"activity": state.dataset.anchor * 1000},
        "assignedWorker": None, "engine": {"engine": state.engine},
    }


def me_info(state: SimulatorState, name: str) -> dict | None:
    if state.statuses[name] != "WORKING":
        return None
    sess = state.dataset.sessions[name]
    return {"id": f"{sess.me_phone}@c.us", "lid": f"{sess.me_lid}@lid",
            "jid": f"{sess.me_phone}:7@s.whatsapp.net", "pushName": sess.me_push_name}


def waha_routes(state: SimulatorState) -> list[Route]:
    """The routes that mimic WAHA's API, answering from `state`."""

    def running(name: str) -> Response | None:
        """None when the session can serve data, else WAHA's 404 / 422 response."""
        status = state.statuses.get(name)
        if status is None or status == "STOPPED" or name in state.deleted:
            return json_response({"message": f"We didn't find a session with name '{name}'.\n"
                                             f"Please start it first by using POST /api/sessions/{name}/start request",
                                  "error": "Not Found", "statusCode": 404}, 404)
        if status != "WORKING":
            return json_response({"error": "Session status is not as expected. Try again later or restart the session",
                                  "session": name, "status": status, "expected": ["WORKING"]}, 422)
        return None

    async def ping(request: Request) -> Response:
        return json_response({"message": "pong"})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "info": {}, "error": {}, "details": {}})

    async def version(request: Request) -> Response:
        return json_response({"version": state.version, "engine": state.engine, "tier": "CORE", "browser": None,
                              "platform": "linux/x64", "worker": {"id": None}})

    async def list_sessions(request: Request) -> Response:
        show_all = query_bool(request.query_params, "all") or False
        names = [n for n in state.dataset.sessions
                 if n not in state.deleted and (show_all or state.statuses[n] != "STOPPED")]
        return json_response([session_info(state, n) for n in names])

    async def get_session(request: Request) -> Response:
        name = request.path_params["session"]
        if name not in state.dataset.sessions or name in state.deleted:
            return json_response({"message": "Session not found", "error": "Not Found", "statusCode": 404}, 404)
        return json_response(session_info(state, name))

    async def get_me(request: Request) -> Response:
        name = request.path_params["session"]
        if name not in state.dataset.sessions or name in state.deleted:
            return json_response({"message": "Session not found", "error": "Not Found", "statusCode": 404}, 404)
        return json_response(me_info(state, name))

    async def list_chats(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        q = request.query_params
        limit = query_int(q, "limit", None, minimum=0)
        offset = query_int(q, "offset", 0, minimum=0) or 0
        index = state.chat_index[name]
        by = query_enum(q, "sortBy", ("conversationTimestamp", "id", "name"), None)
        order = query_enum(q, "sortOrder", ("desc", "asc"), None)
        if by is None:
            by, default_order = index.default_sort
            order = order or default_order
        order = order or ("asc" if by == "id" else "desc")
        items = (index.desc if order == "desc" else index.asc)[by or "id"]
        page = items[offset:] if not limit else items[offset: offset + limit]
        return raw_response(b"[" + b",".join(page) + b"]")

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
        limit = query_int(q, "limit", 10, minimum=0)
        if not limit:  # controller default 10; WEBJS turns a falsy limit into Infinity in the page script
            limit = 10 if not webjs or limit is None else 1 << 62
        offset = 0 if ignore_offset else (query_int(q, "offset", 0, minimum=0) or 0)
        query_bool(q, "downloadMedia")
        query_enum(q, "sortBy", ("timestamp", "messageTimestamp"), "timestamp")
        order = query_enum(q, "sortOrder", ("desc", "asc"), "desc")
        if webjs:
            order = "desc"
        gte = query_int(q, "filter.timestamp.gte", None)
        lte = None if ignore_lte else query_int(q, "filter.timestamp.lte", None)
        from_me = query_bool(q, "filter.fromMe")
        chat_id = request.path_params["chat_id"]
        chat = state.dataset.sessions[name].find_chat(chat_id)
        state.stats.count_chat(chat.id if chat is not None else chat_id)
        if chat is None:  # store engines answer an unknown chat with an empty list
            return raw_response(b"[]")
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
        return raw_response(b"[" + b",".join(blobs) + b"]")  # type: ignore[arg-type]

    async def list_lids(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        q = request.query_params
        limit = query_int(q, "limit", 100, minimum=0) or 100
        offset = query_int(q, "offset", 0, minimum=0) or 0
        lids = state.dataset.sessions[name].lids
        keys = sorted(lids)[offset: offset + limit]
        return json_response([{"lid": f"{k}@lid", "pn": f"{lids[k]}@c.us"} for k in keys])

    async def count_lids(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        return json_response({"count": len(state.dataset.sessions[name].lids)})

    async def get_lid(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        lid = request.path_params["lid"].split("@", 1)[0]
        pn = state.dataset.sessions[name].lids.get(lid)
        return json_response({"lid": f"{lid}@lid", "pn": f"{pn}@c.us" if pn else None})

    async def get_pn(request: Request) -> Response:
        name = request.path_params["session"]
        if (err := running(name)) is not None:
            return err
        phone = request.path_params["phone"].split("@", 1)[0].lstrip("+")
        lid = state.dataset.sessions[name].pn_to_lid.get(phone)
        return json_response({"lid": f"{lid}@lid" if lid else None, "pn": f"{phone}@c.us"})

    return [
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
    ]
