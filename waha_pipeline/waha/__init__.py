"""WAHA access: async client (transport + paging), retry policy, circuit breaker, per-server limiter and boundary
models. No CRM, no Dagster."""

from waha_pipeline.waha.breaker import BreakerPolicy, CircuitBreaker, shared_breaker
from waha_pipeline.waha.client import WahaClient, WahaTimeouts
from waha_pipeline.waha.limiter import ServerLimiter, shared_limiter
from waha_pipeline.waha.models import LidMapping, SessionInfo, chat_id_of, message_id_of, parse_lid_mapping, parse_session
from waha_pipeline.waha.retry import RetryPolicy, classify, parse_retry_after
from waha_pipeline.waha.stats import WahaStats

__all__ = [
    "BreakerPolicy",
    "CircuitBreaker",
    "LidMapping",
    "RetryPolicy",
    "ServerLimiter",
    "SessionInfo",
    "WahaClient",
    "WahaStats",
    "WahaTimeouts",
    "chat_id_of",
    "classify",
    "message_id_of",
    "parse_lid_mapping",
    "parse_retry_after",
    "parse_session",
    "shared_breaker",
    "shared_limiter",
]
