"""Plan a channel: find its WAHA session, list its chats and lid mapping, split them into chunks, record it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline.domain.planning import ChannelPlan, channel_slug, plan_channel
from waha_pipeline.errors import WahaPermanentError, WahaSessionNotFound
from waha_pipeline.settings import plan_deadline_seconds
from waha_pipeline.waha.client import WahaClient
from waha_pipeline.waha.models import SessionInfo


@dataclass(frozen=True)
class PlanRequest:
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


async def find_session(client: WahaClient, slug_or_name: str) -> SessionInfo:
    """A channel partition key is the slug of its WAHA session name; accept the plain name too."""
    for session in await client.list_sessions(all=True):
        if session.name == slug_or_name or channel_slug(session.name) == slug_or_name:
            return session
    raise WahaSessionNotFound(f"WAHA has no session named {slug_or_name!r}", status=404)


async def plan_and_record(
    client: WahaClient,
    store: CrmStore,
    session: SessionInfo,
    request: PlanRequest,
    *,
    default_tenant: str,
    plan_time: int,
    fetch_deadline: float | None = None,
) -> RecordedPlan:
    """Plan the channel from WAHA's chat list and lid mapping and record it. Fetching both lists ends within
    `fetch_deadline` seconds (None: WAHA_PLAN_DEADLINE_SECONDS), retries included, or fails the plan."""
    tenant_id = session.tenant_id or default_tenant
    channel = store.ensure_channel(tenant_id, session.name, session.me_push_name or session.name)
    latest = store.latest_plan(channel.id)
    if latest is not None and latest.plan_time >= plan_time:
        # A second plan within the same second would get the first one's id, and recording it would keep the
        # first plan's chunks under the new plan's keys: plans of a channel get strictly later times instead.
        plan_time = latest.plan_time + 1
    deadline = plan_deadline_seconds() if fetch_deadline is None else fetch_deadline
    raw_chats, lid_map = await fetch_chats_and_lids(client, session.name, deadline)
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
