"""The CRM tables as SQLAlchemy Core metadata (SPEC 5): the contract's column names, `tenant_id` on every table.

Ids are `UUID_T`: native `uuid` on PostgreSQL, `VARCHAR(36)` holding the canonical dashed text on SQLite, so
the Python value is the same `str` from `domain.ids` everywhere and bulk (text) SQL agrees with Core on both.
Times are `UtcDateTime`: `timestamptz` on PostgreSQL, timezone-aware UTC `datetime` in Python on both backends.
Production creates these tables through the alembic revisions in `migrations/`, never `create_all`.

A channel is one WhatsApp account on one WAHA server: (tenant, WAHA session name, account).

SPEC 5 keys channels on (tenant_id, waha_session). That is wrong once a tenant runs two WAHA servers: WAHA Core
allows one session, always named `default`, so two numbers of one company are two servers that both have a
`default` session. The key is (tenant_id, waha_session, account), `account` being the digits of the session's
`me.id` (NULL for channels recorded before accounts were stored, until their next import learns it). The server's
URL is not part of the identity: a channel whose WAHA server moves keeps its rows, and `waha_server` (the base URL
without credentials, for display only) follows it. `slug` is the channel's partition key and chunk key prefix,
unique across tenants, stored once and never recomputed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

UUID_T = sa.Uuid(as_uuid=False).with_variant(sa.String(36), "sqlite")


class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """`DateTime(timezone=True)` that only accepts aware datetimes and always returns aware UTC ones.

    SQLite keeps no offset (SQLAlchemy stores the wall time), so values are converted to UTC before binding
    and tagged UTC when read back.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the CRM stores timezone-aware UTC times only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _id(name: str = "id", *args: Any, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, UUID_T, *args, **kw)


def _tenant() -> sa.Column[Any]:
    return sa.Column("tenant_id", sa.Text, nullable=False)


def _created_at() -> sa.Column[Any]:
    return sa.Column("created_at", UtcDateTime, nullable=False, server_default=sa.func.now())


def _updated_at() -> sa.Column[Any]:
    return sa.Column("updated_at", UtcDateTime, nullable=False, server_default=sa.func.now())


channels = sa.Table(
    "channels",
    metadata,
    _id(primary_key=True),
    _tenant(),
    sa.Column("waha_session", sa.Text, nullable=False),
    sa.Column("account", sa.Text),
    sa.Column("waha_server", sa.Text),
    sa.Column("slug", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("session_timeout_minutes", sa.Integer, nullable=False, server_default=sa.text("30")),
    _created_at(),
    _updated_at(),
    sa.UniqueConstraint("tenant_id", "waha_session", "account"),
    sa.UniqueConstraint("slug"),
    sa.CheckConstraint("session_timeout_minutes > 0", name="session_timeout_positive"),
)

contacts = sa.Table(
    "contacts",
    metadata,
    _id(primary_key=True),
    _tenant(),
    sa.Column("phone", sa.Text),
    sa.Column("lid", sa.Text),
    sa.Column("group_id", sa.Text),
    sa.Column("name", sa.Text),
    _created_at(),
    _updated_at(),
    # NULLs never collide in a UNIQUE constraint on PostgreSQL or SQLite: "unique where not NULL" (SPEC 5).
    sa.UniqueConstraint("tenant_id", "phone"),
    sa.UniqueConstraint("tenant_id", "lid"),
    sa.UniqueConstraint("tenant_id", "group_id"),
    sa.CheckConstraint(
        "phone IS NOT NULL OR lid IS NOT NULL OR group_id IS NOT NULL", name="has_identity"
    ),
)

sessions = sa.Table(
    "sessions",
    metadata,
    _id(primary_key=True),
    _tenant(),
    _id("channel_id", sa.ForeignKey("channels.id"), nullable=False),
    _id("contact_id", sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("ended_at", UtcDateTime, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False),
    sa.Column("messages_from_contact", sa.Integer, nullable=False),
    sa.Column("messages_from_agent", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Index(None, "channel_id", "contact_id"),
    sa.CheckConstraint("status IN ('open', 'closed')", name="status"),
)

messages = sa.Table(
    "messages",
    metadata,
    _id(primary_key=True),
    _tenant(),
    _id("channel_id", sa.ForeignKey("channels.id"), nullable=False),
    _id("contact_id", sa.ForeignKey("contacts.id"), nullable=False),
    _id("session_id", sa.ForeignKey("sessions.id")),
    sa.Column("chat_id", sa.Text, nullable=False),
    sa.Column("external_id", sa.Text, nullable=False),
    sa.Column("from_me", sa.Boolean, nullable=False),
    sa.Column("sent_at", UtcDateTime, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("sender_id", sa.Text),
    sa.Column("push_name", sa.Text),
    _created_at(),
    sa.UniqueConstraint("channel_id", "external_id"),
    sa.Index(None, "channel_id", "contact_id", "sent_at"),
    sa.Index(None, "session_id"),
)

message_rejects = sa.Table(
    "message_rejects",
    metadata,
    _id(primary_key=True),  # ids.reject_id: deterministic, so a re-import never adds a second row
    _tenant(),
    _id("channel_id", sa.ForeignKey("channels.id"), nullable=False),
    sa.Column("chat_id", sa.Text, nullable=False),
    sa.Column("external_id", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text),
    _created_at(),
    sa.Index(None, "channel_id", "chat_id"),
)

import_plans = sa.Table(
    "import_plans",
    metadata,
    _id(primary_key=True),
    _tenant(),
    _id("channel_id", sa.ForeignKey("channels.id"), nullable=False),
    sa.Column("channel_slug", sa.Text, nullable=False),
    sa.Column("plan_time", UtcDateTime, nullable=False),
    sa.Column("window_start", UtcDateTime),  # NULL = the whole history (--days 0)
    sa.Column("window_end", UtcDateTime, nullable=False),
    sa.Column("days", sa.Integer, nullable=False),
    sa.Column("session_timeout_minutes", sa.Integer, nullable=False),
    sa.Column("chunk_size", sa.Integer, nullable=False),
    sa.Column("include_groups", sa.Boolean, nullable=False),
    # every chat planned and read over the whole window, coverage notwithstanding (a deep pass)
    sa.Column("all_chats", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("chats_total", sa.Integer, nullable=False),
    sa.Column("skipped", sa.JSON, nullable=False),
    _created_at(),
    sa.Index(None, "channel_id", "plan_time"),
)

CHUNK_STATUSES = ("pending", "committed", "failed")

import_chunks = sa.Table(
    "import_chunks",
    metadata,
    _id("plan_id", sa.ForeignKey("import_plans.id"), nullable=False),
    _tenant(),
    sa.Column("chunk_key", sa.Text, nullable=False),
    sa.Column("chunk_index", sa.Integer, nullable=False),
    sa.Column("chat_ids", sa.JSON, nullable=False),  # normalized chat ids, in plan order
    sa.Column("chats_detail", sa.JSON, nullable=False),  # PlannedChat fields per chat: a re-run rebuilds them
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("chats", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("messages", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("rejects", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("sessions", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("contacts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("skipped", sa.JSON),  # reason -> rows WAHA served that were not stored as messages or rejects
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text),
    sa.Column("committed_at", UtcDateTime),
    _updated_at(),
    sa.PrimaryKeyConstraint("plan_id", "chunk_key"),
    sa.CheckConstraint("status IN ('pending', 'committed', 'failed')", name="status"),
)

# Per chat, the span of its history that is entirely in the CRM (domain.coverage): a re-import fetches only the
# rest of its window. Written in the chunk's transaction, so it never vouches for rows that did not commit.
chat_coverage = sa.Table(
    "chat_coverage",
    metadata,
    _id("channel_id", sa.ForeignKey("channels.id"), nullable=False),
    _tenant(),
    sa.Column("chat_id", sa.Text, nullable=False),
    sa.Column("covered_from", UtcDateTime),  # NULL: since the beginning of the chat
    sa.Column("covered_to", UtcDateTime, nullable=False),
    sa.Column("has_messages", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("fingerprint", sa.Text),  # planning.chat_fingerprint of the chat's last commit
    _updated_at(),
    sa.PrimaryKeyConstraint("channel_id", "chat_id"),
)


def to_utc(seconds: int) -> dt.datetime:
    """Unix seconds -> aware UTC datetime (the store boundary; frames carry ints)."""
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC)


def to_seconds(value: dt.datetime) -> int:
    """Aware (or UTC-naive, as SQLite returns in raw SQL) datetime -> Unix seconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())
