"""A committed chunk records what it skipped, by reason: rows WAHA served that are not messages, or lie
outside the plan's window, so the ledger accounts for every row WAHA served.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for chunks committed before: their skipped rows were not counted by reason.
    op.add_column("import_chunks", sa.Column("skipped", sa.JSON))


def downgrade() -> None:
    op.drop_column("import_chunks", "skipped")
