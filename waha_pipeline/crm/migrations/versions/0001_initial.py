"""Initial CRM schema: channels, contacts, sessions, messages, message_rejects and the import ledger.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _uuid() -> sa.types.TypeEngine:
    # native uuid on PostgreSQL; the canonical dashed text on SQLite (same Python str on both)
    return sa.Uuid(as_uuid=False).with_variant(sa.String(36), "sqlite")


def _ts() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def _now() -> sa.Column:
    return sa.func.now()


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("waha_session", sa.Text(), nullable=False),
        sa.Column("name", sa.Text()),
        sa.Column("session_timeout_minutes", sa.Integer(), nullable=False, server_default=sa.text("30")),
        sa.Column("created_at", _ts(), nullable=False, server_default=_now()),
        sa.Column("updated_at", _ts(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
        sa.UniqueConstraint("tenant_id", "waha_session", name="uq_channels_tenant_id_waha_session"),
        sa.CheckConstraint("session_timeout_minutes > 0", name=op.f("ck_channels_session_timeout_positive")),
    )
    op.create_table(
        "contacts",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("phone", sa.Text()),
        sa.Column("lid", sa.Text()),
        sa.Column("group_id", sa.Text()),
        sa.Column("name", sa.Text()),
        sa.Column("created_at", _ts(), nullable=False, server_default=_now()),
        sa.Column("updated_at", _ts(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_contacts"),
        sa.UniqueConstraint("tenant_id", "phone", name="uq_contacts_tenant_id_phone"),
        sa.UniqueConstraint("tenant_id", "lid", name="uq_contacts_tenant_id_lid"),
        sa.UniqueConstraint("tenant_id", "group_id", name="uq_contacts_tenant_id_group_id"),
        sa.CheckConstraint(
            "phone IS NOT NULL OR lid IS NOT NULL OR group_id IS NOT NULL", name=op.f("ck_contacts_has_identity")
        ),
    )
    op.create_table(
        "sessions",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("channel_id", _uuid(), nullable=False),
        sa.Column("contact_id", _uuid(), nullable=False),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("ended_at", _ts(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("messages_from_contact", sa.Integer(), nullable=False),
        sa.Column("messages_from_agent", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name="fk_sessions_channel_id_channels"),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name="fk_sessions_contact_id_contacts"),
        sa.CheckConstraint("status IN ('open', 'closed')", name=op.f("ck_sessions_status")),
    )
    op.create_index("ix_sessions_channel_id_contact_id", "sessions", ["channel_id", "contact_id"])
    op.create_table(
        "messages",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("channel_id", _uuid(), nullable=False),
        sa.Column("contact_id", _uuid(), nullable=False),
        sa.Column("session_id", _uuid()),
        sa.Column("chat_id", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("from_me", sa.Boolean(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("body", sa.Text()),
        sa.Column("sender_id", sa.Text()),
        sa.Column("push_name", sa.Text()),
        sa.Column("created_at", _ts(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name="fk_messages_channel_id_channels"),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name="fk_messages_contact_id_contacts"),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name="fk_messages_session_id_sessions"),
        sa.UniqueConstraint("channel_id", "external_id", name="uq_messages_channel_id_external_id"),
    )
    op.create_index("ix_messages_channel_id_contact_id_sent_at", "messages", ["channel_id", "contact_id", "sent_at"])
    op.create_index("ix_messages_session_id", "messages", ["session_id"])
    op.create_table(
        "message_rejects",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("channel_id", _uuid(), nullable=False),
        sa.Column("chat_id", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text()),
        sa.Column("created_at", _ts(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_message_rejects"),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name="fk_message_rejects_channel_id_channels"),
    )
    op.create_index("ix_message_rejects_channel_id_chat_id", "message_rejects", ["channel_id", "chat_id"])
    op.create_table(
        "import_plans",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("channel_id", _uuid(), nullable=False),
        sa.Column("channel_slug", sa.Text(), nullable=False),
        sa.Column("plan_time", _ts(), nullable=False),
        sa.Column("window_start", _ts()),
        sa.Column("window_end", _ts(), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("session_timeout_minutes", sa.Integer(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("include_groups", sa.Boolean(), nullable=False),
        sa.Column("chats_total", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_import_plans"),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name="fk_import_plans_channel_id_channels"),
    )
    op.create_index("ix_import_plans_channel_id_plan_time", "import_plans", ["channel_id", "plan_time"])
    op.create_table(
        "import_chunks",
        sa.Column("plan_id", _uuid(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("chunk_key", sa.Text(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("chat_ids", sa.JSON(), nullable=False),
        sa.Column("chats_detail", sa.JSON(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("chats", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("messages", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("rejects", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("sessions", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("contacts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text()),
        sa.Column("committed_at", _ts()),
        sa.Column("updated_at", _ts(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("plan_id", "chunk_key", name="pk_import_chunks"),
        sa.ForeignKeyConstraint(["plan_id"], ["import_plans.id"], name="fk_import_chunks_plan_id_import_plans"),
        sa.CheckConstraint("status IN ('pending', 'committed', 'failed')", name=op.f("ck_import_chunks_status")),
    )


def downgrade() -> None:
    for table in ("import_chunks", "import_plans", "message_rejects", "messages", "sessions", "contacts", "channels"):
        op.drop_table(table)
