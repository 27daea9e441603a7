"""Plan a channel: find its WAHA session, list its chats and lid mapping, split them into chunks, record it.

A channel is (tenant, WAHA session name, WhatsApp account): the account is the digits of the session's `me.id`,
so two WAHA servers that both run a session named `default` are two channels with two slugs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from waha_pipeline.crm.records import ChannelRecord
from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline.domain.planning import channel_slug, chunk_key, plan_channel
from waha_pipeline.domain.plans import ChannelPlan
from waha_pipeline.errors import WahaPermanentError, WahaSessionNotFound
from waha_pipeline.settings import DEFAULT_PLAN_DEADLINE_S
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.models import SessionInfo


@dataclass(frozen=True)
class PlanRequest:
    """How a channel is planned (the CLI's options and the plan run's config carry exactly these)."""

    days: int = 180
    session_timeout_minutes: int | None = None  # None: the channel's own setting (default 30)
    chunk_size: int = 50
    include_groups: bool = False
    all_chats: bool = False  # True: no contact is left out as up to date


@dataclass(frozen=True)
class RecordedPlan:
    plan_id: str
    channel_id: str
    tenant_id: str
    plan: ChannelPlan


class ChannelNotPlannable(WahaPermanentError):
    """The WAHA session of a channel cannot be planned now: not WORKING (no account), or another account."""


def account_of(session: SessionInfo) -> str:
    """The digits of the session's `me.id`: the WhatsApp account that, with the tenant and the session name, is
    the channel. A session that is not WORKING has no `me`, so it cannot be planned."""
    account = _digits(session.me_id or "")
    if not session.working or not account.isdigit():
        raise ChannelNotPlannable(
            f"WAHA session {session.name!r} is {session.status}, not WORKING: it has no WhatsApp account to plan "
            "(connect it first)",
            method="GET",
            path=f"/api/sessions/{session.name}",
        )
    return account


def public_url(base_url: str) -> str:
    """A WAHA base URL without credentials, query or fragment: what the CRM shows as the channel's server."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolve_channel(
    store: CrmStore, session: SessionInfo, *, default_tenant: str, waha_server: str | None
) -> ChannelRecord:
    """The CRM channel of a WORKING session on this server: (tenant, session name, account), created when new.
    The server's URL is recorded for display; it does not decide which channel this is."""
    return store.ensure_channel(
        session.tenant_id or default_tenant,
        session.name,
        session.me_push_name or session.name,
        account=account_of(session),
        waha_server=None if waha_server is None else public_url(waha_server),
    )


async def find_session(client: WahaClient, store: CrmStore | None, slug_or_name: str) -> SessionInfo:
    """The WAHA session of a channel partition key (a slug) or of a plain session name on this WAHA server.

    A slug the CRM knows names one channel (session_of_channel). A slug the CRM does not know yet (or no `store`)
    is matched against this server's session names and the slugs their accounts give.
    """
    channel = None if store is None else store.channel_by_slug(slug_or_name)
    if channel is not None:
        return await session_of_channel(client, channel)
    sessions = await client.list_sessions(all=True)
    for session in sessions:
        if session.name == slug_or_name:
            return session
    for session in sessions:
        if channel_slug(session.name) == slug_or_name or (
            session.working and session.me_id and channel_slug(session.name, _digits(session.me_id)) == slug_or_name
        ):
            return session
    raise WahaSessionNotFound(f"WAHA has no session named {slug_or_name!r}", status=404)


async def session_of_channel(client: WahaClient, channel: ChannelRecord) -> SessionInfo:
    """The channel's session on this WAHA server, which must serve the channel's account: a server serving another
    account under that session name is another channel, and is refused."""
    try:
        session = await client.get_session(channel.waha_session)
    except WahaSessionNotFound:
        raise WahaSessionNotFound(
            f"channel {channel.slug!r}: this WAHA server has no session named {channel.waha_session!r}", status=404
        ) from None
    account = account_of(session)
    if channel.account is not None and account != channel.account:
        raise ChannelNotPlannable(
            f"channel {channel.slug!r} is WhatsApp account …{channel.account[-4:]}, but session {session.name!r} on "
            f"this WAHA server is account …{account[-4:]}: set WAHA_BASE_URL to the channel's server",
            method="GET",
            path=f"/api/sessions/{session.name}",
        )
    return session


def _digits(me_id: str) -> str:
    return me_id.partition("@")[0].partition(":")[0]


def with_slug(plan: ChannelPlan, slug: str) -> ChannelPlan:
    """The plan under the channel's stored slug: its chunk keys are `{slug}.cNNNN`."""
    if plan.channel_slug == slug:
        return plan
    chunks = tuple(dataclasses.replace(c, key=chunk_key(slug, c.index)) for c in plan.chunks)
    return dataclasses.replace(plan, channel_slug=slug, chunks=chunks)


async def plan_and_record(
    client: WahaClient,
    store: CrmStore,
    session: SessionInfo,
    request: PlanRequest,
    *,
    default_tenant: str,
    plan_time: int,
    fetch_deadline: float = DEFAULT_PLAN_DEADLINE_S,
    waha_server: str | None = None,
) -> RecordedPlan:
    """Plan the channel from WAHA's chat list and lid mapping and record it. Fetching both lists ends within
    `fetch_deadline` seconds (WAHA_PLAN_DEADLINE_SECONDS), retries included, or fails the plan."""
    channel = resolve_channel(store, session, default_tenant=default_tenant, waha_server=waha_server)
    tenant_id = channel.tenant_id
    latest = store.latest_plan(channel.id)
    if latest is not None and latest.plan_time >= plan_time:
        # A second plan within the same second would get the first one's id, and recording it would keep the
        # first plan's chunks under the new plan's keys: plans of a channel get strictly later times instead.
        plan_time = latest.plan_time + 1
    raw_chats, lid_map = await fetch_chats_and_lids(client, session.name, fetch_deadline)
    plan = plan_channel(
        raw_chats,
        lid_map,
        waha_session=session.name,
        plan_time=plan_time,
        days=request.days,
        chunk_size=request.chunk_size,
        session_timeout_minutes=request.session_timeout_minutes or channel.session_timeout_minutes or 30,
        include_groups=request.include_groups,
        known=None if request.all_chats else store.chat_coverage(channel.id),
        learned_phones=store.known_lid_phones(tenant_id),
    )
    plan = dataclasses.replace(with_slug(plan, channel.slug), all_chats=request.all_chats)
    plan_id = ids.plan_id(channel.id, plan_time)
    store.record_plan(tenant_id, channel.id, plan, plan_id)
    return RecordedPlan(plan_id=plan_id, channel_id=channel.id, tenant_id=tenant_id, plan=plan)


async def fetch_chats_and_lids(
    client: WahaClient, session: str, deadline: float
) -> tuple[list[dict[str, object]], dict[str, str | None]]:
    """The session's chat list and lid mapping, fetched at once (two fewer round trips), within `deadline` seconds:
    a chat list that never ends, or a WAHA that keeps the lists coming slowly, fails the plan instead of running
    on (nothing is recorded)."""
    chats = asyncio.ensure_future(client.list_chats(session))
    try:
        async with asyncio.timeout(deadline) as bound:
            lid_map = await client.lid_map(session)
            raw_chats = await chats
    except TimeoutError:
        if not bound.expired():
            raise
        raise WahaPermanentError(
            f"planning {session!r}: listing its chats and lids took longer than {deadline:g} s "
            "(WAHA_PLAN_DEADLINE_SECONDS); WAHA's chat list may not end",
            method="GET",
            path=f"/api/{session}/chats",
        ) from None
    finally:
        chats.cancel()  # when the lid mapping failed or time ran out; a no-op once done
    return raw_chats, lid_map
