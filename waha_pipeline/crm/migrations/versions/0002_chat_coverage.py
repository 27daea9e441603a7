"""Chat coverage: the span of each chat's history already in the CRM, for incremental re-imports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_coverage",
        sa.Column("channel_id", sa.Uuid(as_uuid=False).with_variant(sa.String(36), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("chat_id", sa.Text, nullable=False),
        sa.Column("covered_from", sa.DateTime(timezone=True)),
        sa.Column("covered_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("has_messages", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("channel_id", "chat_id", name="pk_chat_coverage"),
        sa.ForeignKeyConstraint(["channel_id"], ["channels.id"], name="fk_chat_coverage_channel_id_channels"),
    )


def downgrade() -> None:
    op.drop_table("chat_coverage")
