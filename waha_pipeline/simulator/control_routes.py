"""The /_sim control routes that tests and the CLI use to steer the simulator (statuses, deletions, faults,
injected chats and messages, growth, outages) and to read its counters and ground truth; kept apart from the WAHA
API like moto's /moto-api."""

from __future__ import annotations

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from waha_pipeline.simulator.faults import Faults
from waha_pipeline.simulator.http_common import json_response, query_bool, query_int
from waha_pipeline.simulator.state import SESSION_STATUSES, SimulatorState
from waha_pipeline.simulator.truth import ground_truth
from waha_pipeline.simulator.waha_routes import session_info


def control_routes(state: SimulatorState) -> list[Route]:
    """The /_sim routes over `state`."""

    async def sim_stats(request: Request) -> Response:
        return json_response(state.stats.snapshot())

    async def sim_reset_stats(request: Request) -> Response:
        state.stats.reset()
        return json_response({"ok": True})

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
        return json_response({"message": f"unknown session {name!r}", "statusCode": 404}, 404)

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
            return json_response({"message": str(exc) or f"status must be one of {SESSION_STATUSES}",
                                  "statusCode": 400}, 400)
        return json_response({**session_info(state, name), "deleted": name in state.deleted, "plans": _plans(name)})

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
            return json_response({"message": str(exc), "statusCode": 400}, 400)
        return json_response({"name": name, "deleted": name in state.deleted, "plans": _plans(name)})

    async def sim_restore_session(request: Request) -> Response:
        """{"status"?: S}: undo a deletion (and a pending one); optionally set the status."""
        name = request.path_params["name"]
        if name not in state.dataset.sessions:
            return _unknown_session(name)
        try:
            state.restore_session(name, (await _body(request)).get("status"))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return json_response({"message": str(exc), "statusCode": 400}, 400)
        return json_response({**session_info(state, name), "deleted": False, "plans": _plans(name)})

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
                return json_response({"message": str(exc), "statusCode": 400}, 400)
        return json_response(state.faults.to_dict())

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
            return json_response({"message": str(exc), "statusCode": 400}, 400)
        return json_response({"id": chat.id, "kind": chat.kind, "name": chat.name})

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
            return json_response({"message": str(exc.args[0] if exc.args else exc), "statusCode": 404}, 404)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return json_response({"message": str(exc), "statusCode": 400}, 400)
        return json_response({"external_id": entry.external_id, "ts": entry.ts, "defect": entry.defect})

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
            return json_response({"message": str(exc), "statusCode": 400}, 400)
        return json_response(result)

    async def sim_down(request: Request) -> Response:
        """{"for_s": S}: close the listening socket and every open connection, reopen after S seconds.
        Over HTTP a duration is required: nothing could reach /_sim to bring it back."""
        listener = state.listener
        if listener is None:
            return json_response({"message": "not served by run_in_thread/serve_forever: use the 'down' fault (503)",
                                  "statusCode": 501}, 501)
        try:
            body = await _body(request)
            for_s = body.get("for_s")
            if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or for_s <= 0:
                raise ValueError("for_s (seconds > 0) is required")
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return json_response({"message": str(exc), "statusCode": 400}, 400)
        return json_response({"down": True, "for_s": for_s},
                             background=BackgroundTask(listener.go_down, float(for_s)))

    async def sim_truth(request: Request) -> Response:
        q = request.query_params
        session = q.get("session") or next(iter(state.dataset.sessions))
        if session not in state.dataset.sessions:
            return json_response({"message": f"unknown session {session!r}", "statusCode": 404}, 404)
        end = query_int(q, "window_end", state.dataset.anchor)
        assert end is not None
        truth = ground_truth(
            state.dataset, session,
            window_start=query_int(q, "window_start", None), window_end=end,
            timeout_minutes=query_int(q, "timeout_minutes", 30) or 30,
            plan_time=query_int(q, "plan_time", end),
            include_groups=query_bool(q, "include_groups") or False,
            tenant_id=q.get("tenant_id") or "default",
        )
        return json_response(truth)

    async def sim_dataset(request: Request) -> Response:
        ds = state.dataset
        return json_response({"anchor": ds.anchor, "seed": ds.spec.seed, "engine": ds.spec.engine,
                              "sessions": {n: {**s.counts(), "status": state.statuses[n], "tenant_id": s.tenant_id,
                                               "deleted": n in state.deleted, "plans": _plans(n)}
                                           for n, s in ds.sessions.items()}})

    return [
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
