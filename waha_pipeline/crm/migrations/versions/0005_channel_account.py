"""A channel is one WhatsApp account on one WAHA server: channels carry the account (digits of the session's
`me.id`), the server they were last imported from (display only) and a stored slug; they are unique on
(tenant_id, waha_session, account) instead of (tenant_id, waha_session).

Every existing row is kept: its slug is the one its chunk keys already use (the slug of its session name), its
account stays NULL until the next import of the channel learns it. Should two tenants share a session name, the
oldest channel keeps that slug and the others get it with `-` + 6 hex chars of sha1(tenant, channel id).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

from waha_pipeline.domain.planning import channel_slug

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SLUG_MAX = 60


def _slugs(rows: list[sa.Row]) -> dict[str, str]:
    """id -> slug, unique: the oldest channel of a session name keeps the name's slug."""
    taken: set[str] = set()
    slugs: dict[str, str] = {}
    for row in rows:
        slug = channel_slug(row.waha_session)
        if slug in taken:
            digest = hashlib.sha1(f"{row.tenant_id}\x1f{row.id}".encode()).hexdigest()[:6]
            slug = f"{slug[: _SLUG_MAX - 7].rstrip('-')}-{digest}"
        taken.add(slug)
        slugs[str(row.id)] = slug
    return slugs


COLUMNS = ("id", "tenant_id", "waha_session", "account", "waha_server", "slug", "name", "session_timeout_minutes",
           "created_at", "updated_at")


def _channels_table(*, account_key: bool) -> sa.Table:
    """The channels table of this revision (`account_key`) or of the one before, for SQLite's table rebuild."""
    uuid = sa.Uuid(as_uuid=False).with_variant(sa.String(36), "sqlite")
    key = ("tenant_id", "waha_session", "account") if account_key else ("tenant_id", "waha_session")
    extra: list[sa.SchemaItem] = []
    if account_key:
        extra += [
            sa.Column("account", sa.Text()),
            sa.Column("waha_server", sa.Text()),
            sa.Column("slug", sa.Text(), nullable=False),
            sa.UniqueConstraint("slug", name="uq_channels_slug"),
        ]
    extra.append(sa.UniqueConstraint(*key, name="uq_channels_" + "_".join(key)))
    return sa.Table(
        "channels",
        sa.MetaData(),
        sa.Column("id", uuid, nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("waha_session", sa.Text(), nullable=False),
        sa.Column("name", sa.Text()),
        sa.Column("session_timeout_minutes", sa.Integer(), nullable=False, server_default=sa.text("30")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
        sa.CheckConstraint("session_timeout_minutes > 0", name="ck_channels_session_timeout_positive"),
        *extra,
    )


def _rebuild_sqlite(conn: sa.Connection, *, account_key: bool, columns: tuple[str, ...]) -> None:
    """SQLite drops a constraint only by rebuilding the table. Its foreign keys are on (crm/sql.py) and cannot be
    turned off inside the migration's transaction, so they are deferred to the commit: the rows dropped with the old
    table are back (same ids) by then."""
    conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
    names = ", ".join(columns)
    conn.exec_driver_sql(f"CREATE TABLE _channels_0005 AS SELECT {names} FROM channels")
    conn.exec_driver_sql("DROP TABLE channels")
    _channels_table(account_key=account_key).create(conn)
    conn.exec_driver_sql(f"INSERT INTO channels ({names}) SELECT {names} FROM _channels_0005")
    conn.exec_driver_sql("DROP TABLE _channels_0005")


def upgrade() -> None:
    op.add_column("channels", sa.Column("account", sa.Text))
    op.add_column("channels", sa.Column("waha_server", sa.Text))
    op.add_column("channels", sa.Column("slug", sa.Text))
    conn = op.get_bind()
    uuid = sa.Uuid(as_uuid=False).with_variant(sa.String(36), "sqlite")
    channels = sa.table("channels", sa.column("id", uuid), sa.column("tenant_id"), sa.column("waha_session"),
                        sa.column("slug"), sa.column("created_at"))
    rows = conn.execute(
        sa.select(channels.c.id, channels.c.tenant_id, channels.c.waha_session).order_by(
            channels.c.created_at, channels.c.id
        )
    ).all()
    for channel_id, slug in _slugs(rows).items():
        conn.execute(sa.update(channels).where(channels.c.id == channel_id).values(slug=slug))
    if conn.dialect.name == "sqlite":
        _rebuild_sqlite(conn, account_key=True, columns=COLUMNS)
        return
    op.alter_column("channels", "slug", existing_type=sa.Text, nullable=False)
    op.drop_constraint("uq_channels_tenant_id_waha_session", "channels", type_="unique")
    op.create_unique_constraint("uq_channels_tenant_id_waha_session_account", "channels",
                                ["tenant_id", "waha_session", "account"])
    op.create_unique_constraint("uq_channels_slug", "channels", ["slug"])


def downgrade() -> None:
    # Fails when a tenant holds two channels of one session name (two WAHA servers): they cannot be told apart.
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        _rebuild_sqlite(conn, account_key=False, columns=tuple(c for c in COLUMNS
                                                               if c not in ("account", "waha_server", "slug")))
        return
    op.drop_constraint("uq_channels_slug", "channels", type_="unique")
    op.drop_constraint("uq_channels_tenant_id_waha_session_account", "channels", type_="unique")
    op.create_unique_constraint("uq_channels_tenant_id_waha_session", "channels", ["tenant_id", "waha_session"])
    op.drop_column("channels", "slug")
    op.drop_column("channels", "waha_server")
    op.drop_column("channels", "account")
