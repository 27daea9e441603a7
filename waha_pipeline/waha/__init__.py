"""WAHA access: async client (transport + paging), retry policy and boundary models. No CRM, no Dagster."""

from waha_pipeline.waha.client import WahaClient, WahaStats, WahaTimeouts
from waha_pipeline.waha.models import LidMapping, SessionInfo, chat_id_of, message_id_of, parse_lid_mapping, parse_session
from waha_pipeline.waha.retry import RetryPolicy, classify, parse_retry_after

__all__ = [
    "LidMapping",
    "RetryPolicy",
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
]
