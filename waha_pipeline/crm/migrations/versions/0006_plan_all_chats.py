"""A plan records whether it reads every chat over its whole window (`all_chats`, the deep catch-up): its chunks
then fetch the covered spans again, so history WAHA syncs late inside them is imported.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plans recorded before read only what their chats' coverage did not hold.
    op.add_column("import_plans", sa.Column("all_chats", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("import_plans", "all_chats")
