"""Chat coverage remembers what the chat's last commit was computed from, so a plan can leave unchanged chats out.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for rows written before: such a chat is imported once more, then carries its fingerprint.
    op.add_column("chat_coverage", sa.Column("fingerprint", sa.Text))


def downgrade() -> None:
    op.drop_column("chat_coverage", "fingerprint")
