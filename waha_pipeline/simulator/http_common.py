"""JSON responses and query-parameter parsing with WAHA's (NestJS) status codes and 400 bodies, shared by the
WAHA routes, the control routes and the middleware."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response

_JSON = "application/json; charset=utf-8"


def json_response(data: Any, status: int = 200, background: BackgroundTask | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON, background=background)


def raw_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=_JSON)


class BadRequest(Exception):
    """Query validation failure, rendered as Nest's ValidationPipe 400."""


def bad_request_response(messages: list[str]) -> Response:
    return json_response({"message": messages, "error": "Bad Request", "statusCode": 400}, 400)


def query_int(q: Any, name: str, default: int | None, *, minimum: int | None = None) -> int | None:
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


def query_bool(q: Any, name: str) -> bool | None:
    v = q.get(name)
    if v is None or v == "":
        return None
    if v in ("true", "True", "1"):
        return True
    if v in ("false", "False", "0"):
        return False
    raise BadRequest(f"{name} must be a boolean value")


def query_enum(q: Any, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    v = q.get(name)
    if v is None or v == "":
        return default
    if v not in allowed:
        raise BadRequest(f"{name} must be one of the following values: {', '.join(allowed)}")
    return v
