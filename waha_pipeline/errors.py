"""The one exception tree of waha-pipeline.

    PipelineError
    ├── ConfigError              bad configuration or arguments; CLI exit 2, nothing written
    ├── WahaError                anything that went wrong talking to WAHA (never carries the API key)
    │   ├── WahaTransientError   connection errors, timeouts, 408, 429, 5xx: worth retrying
    │   │   └── WahaCircuitOpen         the server's circuit breaker is open: failed fast, nothing was sent
    │   └── WahaPermanentError   400/401/403/404, unserveable chat, bad body: retrying cannot help
    │       ├── WahaSessionNotFound     GET /api/sessions/{name} says 404: the channel is gone
    │       ├── WahaSessionNotReady     422 after waiting, or a 404 while the session is not WORKING (e.g. STOPPED)
    │       └── WahaChatNotFound        a 404 naming a chat of a WORKING session: that chat's chunk fails
    └── ChunkError               a chunk could not be imported (wraps the cause, names the chunk)
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """Invalid configuration or argument; the message names the variable or flag."""


class WahaError(PipelineError):
    """A WAHA call failed. `status` is the HTTP status or None for transport errors."""

    def __init__(self, message: str, *, status: int | None = None, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path


class WahaTransientError(WahaError):
    """Retrying later may succeed (connection error, timeout, 408, 429, 5xx)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class WahaCircuitOpen(WahaTransientError):
    """Recent calls to this WAHA server mostly failed, so the call was refused without touching the network.

    `retry_after` is the time until the breaker lets a probe through; retrying the whole unit of work (the chunk)
    after that is the right reaction, retrying the single call at once is not.
    """


class WahaPermanentError(WahaError):
    """Retrying cannot help (bad request, auth, not found, malformed body)."""


class WahaSessionNotFound(WahaPermanentError):
    """The WAHA session (the CRM channel) does not exist: `GET /api/sessions/{name}` answered 404."""


class WahaSessionNotReady(WahaPermanentError):
    """The session exists but is not WORKING: a 422 that outlasted the wait, or a 404 on a session-scoped path
    while the session is e.g. STOPPED."""


class WahaChatNotFound(WahaPermanentError):
    """WAHA answered 404 for one chat while its session is WORKING: that chat cannot be served (SPEC 6.8)."""

    def __init__(self, message: str, *, chat_id: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.chat_id = chat_id


class ChunkError(PipelineError):
    """A chunk failed; the message is the one-line reason shown in Dagster and `status`."""


class ChunkTooLarge(ChunkError):
    """A chunk's fetched messages passed IMPORT_CHUNK_MAX_MB: retrying cannot shrink them."""
