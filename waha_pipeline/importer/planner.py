"""Plan a channel: find its WAHA session, list its chats and lid mapping, split them into chunks, record it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain import ids
from waha_pipeline.domain.planning import ChannelPlan, channel_slug, plan_channel
from waha_pipeline.errors import WahaSessionNotFound
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
) -> RecordedPlan:
    tenant_id = session.tenant_id or default_tenant
    channel = store.ensure_channel(tenant_id, session.name, session.me_push_name or session.name)
    latest = store.latest_plan(channel.id)
    if latest is not None and latest.plan_time >= plan_time:
        # A second plan within the same second would get the first one's id, and recording it would keep the
        # first plan's chunks under the new plan's keys: plans of a channel get strictly later times instead.
        plan_time = latest.plan_time + 1
    chats = asyncio.ensure_future(client.list_chats(session.name))  # both lists at once: two fewer round trips
    try:
        lid_map = await client.lid_map(session.name)
        raw_chats = await chats
    finally:
        chats.cancel()  # when the lid mapping failed; a no-op once done
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
