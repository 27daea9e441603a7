"""Configuration from the environment (SPEC §3), parsed once and validated before any work is done.

Every invalid value raises ConfigError with one line naming the variable; secrets never appear in messages.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from waha_pipeline.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///.waha/crm.sqlite"
DEFAULT_DAGSTER_HOME = ".waha/dagster_home"
DEFAULT_TENANT = "default"
DEFAULT_STAGE_SUBDIR = "storage/waha_stages"  # under DAGSTER_HOME, when IMPORT_STAGE_URL is unset
DEFAULT_MAX_RESPONSE_MB = 64.0  # a WAHA page of 2,000 chats or 500 messages is a few MB
DEFAULT_PLAN_DEADLINE_S = 300.0  # listing chats and lids of a channel, retries included
DEFAULT_CRM_LOCK_TIMEOUT_S = 60.0  # one wait for a lock inside a chunk's commit
DEFAULT_CRM_STATEMENT_TIMEOUT_S = 300.0  # one statement of a chunk's commit
DEFAULT_CHUNK_MAX_MB = 1024.0  # the messages one chunk holds as fetched JSON text (a seed channel is ~4 MB)
DEFAULT_CATCHUP_MINUTES = 15.0  # incremental re-import of every WORKING channel
DEFAULT_CATCHUP_DEEP_HOURS = 24.0  # re-read of every chat, also those the chat list shows unchanged


@dataclass(frozen=True)
class Settings:
    waha_base_url: str | None
    waha_api_key: str | None = field(repr=False)
    database_url: str = field(repr=False)
    dagster_home: Path = Path(DEFAULT_DAGSTER_HOME)
    tenant_id: str = DEFAULT_TENANT
    waha_concurrency: int = 32
    waha_page_size: int = 500
    import_workers: int = 2
    waha_max_response_mb: float = DEFAULT_MAX_RESPONSE_MB
    waha_plan_deadline_seconds: float = DEFAULT_PLAN_DEADLINE_S
    crm_lock_timeout_seconds: float = DEFAULT_CRM_LOCK_TIMEOUT_S
    crm_statement_timeout_seconds: float = DEFAULT_CRM_STATEMENT_TIMEOUT_S
    chunk_max_mb: float = DEFAULT_CHUNK_MAX_MB
    # IMPORT_STAGE_URL: where chunk stage files live; None = under DAGSTER_HOME (stage_store_url)
    stage_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            waha_base_url=parse_waha_url(env.get("WAHA_BASE_URL")),
            waha_api_key=env.get("WAHA_API_KEY") or None,
            database_url=parse_database_url(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL),
            dagster_home=Path(env.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).absolute(),
            tenant_id=_tenant(env.get("WAHA_TENANT_ID")),
            waha_concurrency=_positive_int(env, "WAHA_CONCURRENCY", 32),
            waha_page_size=_positive_int(env, "WAHA_PAGE_SIZE", 500),
            import_workers=_positive_int(env, "IMPORT_WORKERS", 2),
            waha_max_response_mb=_positive_number(env, "WAHA_MAX_RESPONSE_MB", DEFAULT_MAX_RESPONSE_MB),
            waha_plan_deadline_seconds=_positive_number(env, "WAHA_PLAN_DEADLINE_SECONDS", DEFAULT_PLAN_DEADLINE_S),
            crm_lock_timeout_seconds=_positive_number(env, "CRM_LOCK_TIMEOUT_SECONDS", DEFAULT_CRM_LOCK_TIMEOUT_S),
            crm_statement_timeout_seconds=_positive_number(env, "CRM_STATEMENT_TIMEOUT_SECONDS",
                                                           DEFAULT_CRM_STATEMENT_TIMEOUT_S),
            chunk_max_mb=_positive_number(env, "IMPORT_CHUNK_MAX_MB", DEFAULT_CHUNK_MAX_MB),
            stage_url=parse_stage_url(env.get("IMPORT_STAGE_URL")),
        )

    @property
    def waha_max_response_bytes(self) -> int:
        """The most one WAHA response body may hold (wire or decoded)."""
        return int(self.waha_max_response_mb * MB)

    @property
    def crm_commit_timeouts(self) -> tuple[float, float]:
        """(lock, statement) seconds of a chunk's commit on PostgreSQL: a lock never released or a runaway statement
        fails the chunk instead of hanging it."""
        return self.crm_lock_timeout_seconds, self.crm_statement_timeout_seconds

    @property
    def stage_store_url(self) -> str:
        """The stage files' root: IMPORT_STAGE_URL, else a directory of the Dagster instance (one machine only)."""
        return self.stage_url or str(self.dagster_home / DEFAULT_STAGE_SUBDIR)

    @property
    def chunk_workers(self) -> int:
        return chunk_workers(self.import_workers, self.database_url)

    def require_waha(self) -> str:
        if not self.waha_base_url:
            raise ConfigError("WAHA_BASE_URL is not set (e.g. http://localhost:3000); `waha-pipeline demo` needs none")
        return self.waha_base_url


MB = 1024 * 1024


@dataclass(frozen=True)
class CatchUp:
    """How often the session sensor re-imports a WORKING channel (0 = never): incrementally every `every_seconds`,
    and every `deep_every_seconds` with all chats (for engines whose chat list lags, and history WAHA syncs late).
    Read when the code location loads, so a deployment changes it with its environment and a reload."""

    every_seconds: float = DEFAULT_CATCHUP_MINUTES * 60
    deep_every_seconds: float = DEFAULT_CATCHUP_DEEP_HOURS * 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CatchUp:
        env = os.environ if env is None else env
        return cls(
            every_seconds=_non_negative_number(env, "WAHA_CATCHUP_MINUTES", DEFAULT_CATCHUP_MINUTES) * 60,
            deep_every_seconds=_non_negative_number(env, "WAHA_CATCHUP_DEEP_HOURS", DEFAULT_CATCHUP_DEEP_HOURS) * 3600,
        )

    @property
    def enabled(self) -> bool:
        return self.every_seconds > 0


def chunk_workers(import_workers: int, database_url: str) -> int:
    """Worker processes for chunk work: several only with a PostgreSQL CRM (SQLite takes one writer at a time)."""
    return import_workers if make_url(database_url).get_backend_name() == "postgresql" else 1


def parse_waha_url(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"WAHA_BASE_URL must be an http(s) URL with a host, got {_redact_url(value)!r}")
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise ConfigError(f"WAHA_BASE_URL has an invalid port: {_redact_url(value)!r}") from None
    return value.strip().rstrip("/")


def parse_database_url(value: str) -> str:
    """Accept sqlite and postgresql URLs; plain postgresql:// means psycopg 3 (what we install)."""
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ConfigError("DATABASE_URL is not a valid SQLAlchemy URL (e.g. postgresql://user@host/db)") from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise ConfigError("DATABASE_URL names no database (postgresql://user@host:5432/<database>)")
    elif backend != "sqlite":
        raise ConfigError(f"DATABASE_URL scheme {url.drivername!r} is not supported; use postgresql:// or sqlite:///")
    return url.render_as_string(hide_password=False)


def parse_stage_url(value: str | None) -> str | None:
    """A local directory (made absolute, so worker processes agree on it) or a URL an installed fsspec filesystem
    serves (`s3://bucket/prefix` needs s3fs); shown redacted in errors, since a URL may carry credentials."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if "://" not in value:
        return str(Path(value).expanduser().absolute())
    import fsspec  # here: only a URL needs it, and it imports the URL's filesystem library
    from fsspec.core import split_protocol

    for part in value.split("::"):  # fsspec chains filesystems: simplecache::s3://...
        protocol = split_protocol(part)[0]
        if protocol and protocol != "file":
            try:
                fsspec.get_filesystem_class(protocol)
            except (ImportError, ValueError) as exc:
                reason = " ".join(str(exc).split())[:200]
                raise ConfigError(f"IMPORT_STAGE_URL {redact_url(value)!r}: no filesystem for {protocol}:// "
                                  f"({reason})") from None
    return value


def redact_database_url(value: str) -> str:
    return make_url(value).render_as_string(hide_password=True)


def _redact_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.password:
        return value.replace(parts.password, "***")
    return value


def redact_url(value: str) -> str:
    """A storage URL for display: any password and query string (where signed URLs keep tokens) become ***."""
    value = re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", value)
    return re.sub(r"\?[^/]*$", "?***", value)


def _tenant(value: str | None) -> str:
    if value is None:
        return DEFAULT_TENANT
    value = value.strip()
    if not value:
        raise ConfigError("WAHA_TENANT_ID is set but empty")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _positive_number(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, zero_allowed=False)


def _non_negative_number(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, zero_allowed=True)


def _number(env: Mapping[str, str], name: str, default: float, *, zero_allowed: bool) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        wanted = "a number >= 0 (0 turns it off)" if zero_allowed else "a positive number"
        raise ConfigError(f"{name} must be {wanted}, got {raw!r}")
    return value


__all__ = ["CatchUp", "Settings", "parse_database_url", "parse_stage_url", "parse_waha_url", "redact_database_url",
           "redact_url"]
