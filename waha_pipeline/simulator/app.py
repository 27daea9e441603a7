"""The fake WAHA HTTP API (waha_api.md) as a Starlette app: the WAHA routes and the /_sim control routes behind
one middleware, with Nest's 404 and 400 bodies for whatever no route answers."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from waha_pipeline.simulator.control_routes import control_routes
from waha_pipeline.simulator.http_common import BadRequest, bad_request_response, json_response
from waha_pipeline.simulator.middleware import SimMiddleware
from waha_pipeline.simulator.state import SimulatorState
from waha_pipeline.simulator.waha_routes import waha_routes


def create_app(state: SimulatorState) -> Starlette:
    """The WAHA API routes of waha_api.md over `state`, wrapped in the stats/auth/fault middleware."""

    routes = waha_routes(state) + control_routes(state)

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response({"message": f"Cannot {request.method} {request.url.path}", "error": "Not Found",
                              "statusCode": 404}, 404)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return bad_request_response([str(exc)])

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return json_response({"message": f"Cannot {request.method} {request.url.path}", "error": "Not Found",
                              "statusCode": 404}, 404)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed,
                                                       BadRequest: bad_request})
    app.add_middleware(SimMiddleware, state=state)
    return app
