#!/usr/bin/env python
"""The floor: a plain importer of one simulated WAHA channel (GOWS engine) into the CRM schema, to measure against.

    .venv/bin/python bench/floor_importer.py CHANNEL --waha-url URL --database-url URL [--days N]
                                            [--concurrency 32] [--page-size 500] [--timeout-minutes 30]

What the product's import does, with none of its machinery: asyncio + httpx against WAHA, the chats read
concurrently (at most `--concurrency` requests in flight), every contact's messages mapped, deduplicated and cut
into conversation sessions (a gap longer than the timeout opens a new session) in plain Python, and the rows
written with COPY by one writer thread in batches of about 20,000 messages (contacts, sessions, messages and
rejects of whole contacts per transaction). No Dagster, no pandas, no ledger, no coverage, no resumability, no
retries: a lower bound for the product's wall time, CPU and memory, not an alternative to it.

Scope: the GOWS wire format (waha_api.md 4.2) with the default import options (1:1 chats only, groups, broadcasts
and newsletters skipped). The schema is created with the product's own migrations in a database that must be
empty; the channel gets slug `<channel>-floor`. Prints one JSON line with the plan time, window and row counts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import math
import queue
import re
import ssl
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psycopg

from waha_pipeline.domain.bodies import media_body
from waha_pipeline.domain.content_types import NOT_A_MESSAGE, classify

UTC = dt.UTC
PROBE_EMPTY_PAGES = 2  # empty pages asked past an empty one before a chat without evidence of its end stops
MAX_PROBE_ROWS = 50_000
MAX_PROBE_PAGE = 8_192
BATCH_MESSAGES = 20_000

# -------------------------------------------------------------------------------------------- message mapping
# Content types and bodies: the product's own pure rules (no pandas behind them); the rest is the floor's.
_NUMBER_CHARS = re.compile(r"[+\-() ]")


def sent_at(raw: dict, info: dict) -> int | None:
    """`timestamp` (Unix seconds), else GOWS `Info.Timestamp` (ISO; the zero Go time is no time)."""
    ts = raw.get("timestamp")
    if type(ts) is int and ts > 0:
        return ts
    if type(ts) is float and math.isfinite(ts) and ts > 0:
        return int(ts)
    if type(ts) is str and ts.strip().isdigit():
        return int(ts)
    iso = info.get("Timestamp")
    if type(iso) is str and iso and not iso.startswith("0001-01-01"):
        try:
            return int(dt.datetime.fromisoformat(iso).timestamp())
        except ValueError:
            return None
    return None


def digits_of(jid: Any, servers: tuple[str, ...]) -> str | None:
    if type(jid) is dict:
        jid = jid.get("_serialized")
    if type(jid) is not str:
        return None
    user, _, server = jid.partition("@")
    user = user.split(":", 1)[0]
    return user if server in servers and user.isascii() and user.isdigit() else None


def just_the_number(name: Any) -> bool:
    if type(name) is not str:
        return True
    stripped = _NUMBER_CHARS.sub("", name)
    return stripped == "" or stripped.isdigit()


# -------------------------------------------------------------------------------------------- the channel's plan
class Group:
    """One contact's chats: a phone's `@c.us` chat and the `@lid` chats mapped to it, or one lid-only chat."""

    __slots__ = ("alt_phone", "chats", "lid", "names", "phone", "read", "rejects", "rows", "seen")

    def __init__(self, phone: str | None, lid: str | None) -> None:
        self.phone, self.lid = phone, lid
        self.chats: list[tuple[str, int | None, bool]] = []  # (chat id, last-message time, is a lid chat)
        self.read: set[str] = set()  # chats already read
        self.names: list[tuple[int, str, str]] = []
        self.rows: list[tuple] = []  # (sent_at, external_id, chat_id, from_me, content_type, body, push_name)
        self.seen: set[str] = set()  # external ids of the contact's messages
        self.rejects: list[tuple] = []
        self.alt_phone: str | None = None

    def absorb(self, other: Group) -> None:
        """Take over a lid-only contact whose messages turned out to carry this contact's phone."""
        self.chats += other.chats
        self.read |= other.read
        self.names += other.names
        self.rows += [r for r in other.rows if r[1] not in self.seen]
        self.seen |= other.seen
        self.rejects += other.rejects
        self.lid = self.lid or other.lid


def plan(chats: list[dict], lid_map: dict[str, str | None]) -> dict[tuple[str, str], Group]:
    pn_to_lid = {pn: lid for lid, pn in lid_map.items() if pn}
    groups: dict[tuple[str, str], Group] = {}
    seen: set[str] = set()
    for chat in chats:
        raw_id = chat.get("id")
        cid = raw_id.get("_serialized") if type(raw_id) is dict else raw_id
        if type(cid) is not str or cid in seen:
            continue
        seen.add(cid)
        cid = cid.replace("@s.whatsapp.net", "@c.us")
        last = chat.get("conversationTimestamp")
        last = last if type(last) is int and last > 0 else None
        name = chat.get("name")
        phone = digits_of(cid, ("c.us",))
        if phone is not None:
            g = groups.setdefault(("p", phone), Group(phone, pn_to_lid.get(phone)))
            g.chats.append((cid, last, False))
            priority = 0
        else:
            lid = digits_of(cid, ("lid",))
            if lid is None:
                continue  # group, broadcast, status, newsletter: skipped by default (SPEC 6.2)
            mapped = lid_map.get(lid)
            key = ("p", mapped) if mapped else ("l", lid)
            g = groups.setdefault(key, Group(mapped, lid) if mapped else Group(None, lid))
            g.chats.append((cid, last, True))
            priority = 1
        if not just_the_number(name):
            g.names.append((priority, cid, name))
    return groups


# -------------------------------------------------------------------------------------------- WAHA
class Waha:
    """httpx clients of at most POOL connections each, `concurrency` requests in flight over all of them: httpx's
    pool scans its connections and waiters on every request, so small pools cost far less CPU than one large."""

    POOL = 4

    def __init__(self, url: str, session: str, concurrency: int, page_size: int) -> None:
        tls = ssl.create_default_context()  # one for all clients: each httpx client would load its own CA bundle
        clients = [httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60.0), verify=tls,
                                     limits=httpx.Limits(max_connections=self.POOL, max_keepalive_connections=self.POOL))
                   for _ in range(-(-concurrency // self.POOL))]
        self.clients = clients
        self.slots: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for i in range(concurrency):
            self.slots.put_nowait(clients[i // self.POOL])
        self.session = quote(session, safe="")
        self.page_size = page_size
        self.requests = 0

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        client = await self.slots.get()
        try:
            self.requests += 1
            response = await client.get(path, params=params)
        finally:
            self.slots.put_nowait(client)
        response.raise_for_status()
        return orjson.loads(response.content)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def pages(self, path: str, limit: int, params: dict[str, str] | None = None) -> list[Any]:
        out: list[Any] = []
        offset = 0
        while True:
            page = await self.get(path, {**(params or {}), "limit": str(limit), "offset": str(offset)})
            if not page:
                return out
            out.extend(page)
            offset += limit

    async def messages(self, chat_id: str, gte: int | None, lte: int, last_at: int | None) -> list[dict]:
        """Every message of a chat in the window, oldest first, read to its end: an empty page ends the read when
        the newest time read has reached the chat list's last-message time; else doubling probes go on (the
        engine drops reactions after slicing, so a page can be empty while later offsets hold messages)."""
        path = f"/api/{self.session}/chats/{quote(chat_id, safe='')}/messages"
        base = {"downloadMedia": "false", "sortBy": "timestamp", "sortOrder": "asc",
                "filter.timestamp.lte": str(lte)}
        if gte is not None:
            base["filter.timestamp.gte"] = str(gte)
        target = lte if last_at is None else min(last_at, lte)
        items: list[dict] = []
        limit, offset, empty, probed, newest = self.page_size, 0, 0, 0, None
        while True:
            page = await self.get(path, {**base, "limit": str(limit), "offset": str(offset)})
            if not page:
                if (newest is not None and newest >= target) or (gte is not None and target < gte):
                    return items
                empty += 1
                probed += limit
                behind = last_at is not None and (newest is None or newest < target)
                if probed >= MAX_PROBE_ROWS or (not behind and empty > PROBE_EMPTY_PAGES):
                    return items
                offset += limit
                limit = max(min(limit * 2, MAX_PROBE_PAGE), self.page_size)
                continue
            empty = probed = 0
            for item in page:
                if type(item) is dict:
                    info = (item.get("_data") or {}).get("Info") if type(item.get("_data")) is dict else None
                    ts = sent_at(item, info if type(info) is dict else {})
                    if ts is not None and (newest is None or ts > newest):
                        newest = ts
            items.extend(page)
            offset += limit
            limit = self.page_size


# -------------------------------------------------------------------------------------------- rows
def map_chat(group: Group, chat_id: str, is_lid: bool, items: list[dict], lo: int, hi: int) -> None:
    """Append the chat's messages (deduplicated within the contact) and rejects to its group."""
    seen = group.seen
    for raw in items:
        if type(raw) is not dict:
            group.rejects.append((chat_id, None, "payload is not a JSON object", orjson.dumps(raw).decode()))
            continue
        data = raw.get("_data")
        data = data if type(data) is dict else {}
        info = data.get("Info")
        info = info if type(info) is dict else {}
        kind = classify(raw)
        if kind in NOT_A_MESSAGE:
            continue
        ext, from_me, body = raw.get("id"), raw.get("fromMe"), raw.get("body")
        reason = None
        if type(ext) is not str or not ext.strip() or "\x00" in ext:
            ext, reason = None, "missing or bad id"
        elif type(from_me) is not bool:
            reason = "fromMe is not a bool"
        elif body is not None and (type(body) is not str or "\x00" in body):
            reason = "bad body"
        ts = sent_at(raw, info) if reason is None else None
        if reason is None and ts is None:
            reason = "no time in any field"
        if reason is not None:
            group.rejects.append((chat_id, ext, reason, orjson.dumps(raw).decode()))
            continue
        if ext in seen:
            continue
        seen.add(ext)
        if is_lid and not from_me and group.phone is None and group.alt_phone is None:
            group.alt_phone = digits_of(info.get("SenderAlt"), ("s.whatsapp.net", "c.us"))
        if ts < lo or ts > hi:
            continue
        if kind != "text":
            body = media_body(body, data)
        push = None
        if not from_me:
            push = info.get("PushName")
            push = (push.strip() or None) if type(push) is str and "\x00" not in push else None
        group.rows.append((ts, ext, chat_id, from_me, kind, body, push))


def _uuid(*parts: str) -> str:
    """32 hex digits (PostgreSQL reads them as a uuid), deterministic."""
    return hashlib.md5("\x1f".join(parts).encode()).hexdigest()


class Writer:
    """One thread that COPYs batches of whole contacts, each batch in one transaction."""

    def __init__(self, url: str, tenant: str, channel_id: str, plan_time: int, timeout_s: int) -> None:
        self.url, self.tenant, self.channel_id = url, tenant, channel_id
        self.plan_time, self.timeout_s = plan_time, timeout_s
        self.q: queue.Queue[list[Group] | None] = queue.Queue(maxsize=2)
        self.counts = {"contacts": 0, "sessions": 0, "messages": 0, "message_rejects": 0}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="copy-writer", daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url) as conn:
                while (batch := self.q.get()) is not None:
                    with conn.transaction():
                        self._write(conn, batch)
                    for g in batch:  # written: let the rows go
                        g.rows, g.rejects, g.seen = [], [], set()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            while self.q.get() is not None:  # unblock the producer
                pass

    def _write(self, conn: psycopg.Connection, batch: list[Group]) -> None:
        contacts, sessions, messages, rejects = [], [], [], []
        tenant, channel, closed_before = self.tenant, self.channel_id, self.plan_time - self.timeout_s
        timeout = self.timeout_s
        for g in batch:
            for chat_id, ext, reason, payload in g.rejects:
                rejects.append((_uuid(channel, chat_id, ext or payload), tenant, channel, chat_id, ext, reason,
                                payload))
            if not g.rows:
                continue
            rows = sorted(g.rows)
            if g.names:
                name = min(g.names)[2]
            else:
                name = next((r[6] for r in reversed(rows) if not r[3] and r[6]), None)
            contact = _uuid(tenant, g.phone or "", g.lid or "")
            contacts.append((contact, tenant, g.phone, g.lid, name))
            start = 0
            for i in range(1, len(rows) + 1):
                if i < len(rows) and rows[i][0] - rows[i - 1][0] <= timeout:
                    continue
                part = rows[start:i]
                mine = sum(1 for r in part if r[3])
                session = _uuid(channel, contact, part[0][1])
                ended = part[-1][0]
                sessions.append((session, tenant, channel, contact, _time(part[0][0]), _time(ended), len(part),
                                 len(part) - mine, mine, "closed" if ended < closed_before else "open"))
                for ts, ext, chat_id, from_me, kind, body, push in part:
                    messages.append((_uuid(channel, ext), tenant, channel, contact, session, chat_id, ext, from_me,
                                     _time(ts), kind, body, None, push))
                start = i
        with conn.cursor() as cur:
            _copy(cur, "contacts (id, tenant_id, phone, lid, name)", contacts)
            _copy(cur, "sessions (id, tenant_id, channel_id, contact_id, started_at, ended_at, message_count, "
                       "messages_from_contact, messages_from_agent, status)", sessions)
            _copy(cur, "messages (id, tenant_id, channel_id, contact_id, session_id, chat_id, external_id, from_me, "
                       "sent_at, content_type, body, sender_id, push_name)", messages)
            _copy(cur, "message_rejects (id, tenant_id, channel_id, chat_id, external_id, reason, payload)", rejects)
        for table, rows_ in (("contacts", contacts), ("sessions", sessions), ("messages", messages),
                             ("message_rejects", rejects)):
            self.counts[table] += len(rows_)


def _time(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, UTC)


def _copy(cur: psycopg.Cursor, target: str, rows: list[tuple]) -> None:
    if rows:
        with cur.copy(f"COPY {target} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


# -------------------------------------------------------------------------------------------- the import
async def migrate(url: str) -> None:
    """The product's schema, through its own migrations, in a child process: they import `waha_pipeline.domain`
    (revision 0005) and with it pandas and pyarrow, which this importer does without. Runs while WAHA is read."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from waha_pipeline.crm.migrate import upgrade; upgrade(sys.argv[1])", url)
    if await child.wait() != 0:
        raise RuntimeError(f"migrations failed with exit code {child.returncode}")


async def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    plan_time = int(time.time())
    lo = -1 if args.days == 0 else plan_time - args.days * 86400
    gte = None if args.days == 0 else lo
    migrated = asyncio.ensure_future(migrate(args.database_url))
    waha = Waha(args.waha_url, args.channel, args.concurrency, args.page_size)
    session = await waha.get(f"/api/sessions/{waha.session}")
    tenant = ((session.get("config") or {}).get("metadata") or {}).get("tenant_id") or args.tenant
    account = digits_of((session.get("me") or {}).get("id"), ("c.us",))
    chats, lids = await asyncio.gather(
        waha.pages(f"/api/{waha.session}/chats", 2000, {"sortBy": "id", "sortOrder": "asc"}),
        waha.pages(f"/api/{waha.session}/lids", 1000))
    lid_map: dict[str, str | None] = {}
    for item in lids:
        lid = digits_of(item.get("lid"), ("lid",)) if type(item) is dict else None
        if lid is not None and lid_map.get(lid) is None:
            lid_map[lid] = digits_of(item.get("pn"), ("c.us", "s.whatsapp.net"))
    groups = plan(chats, lid_map)
    del chats, lids

    async def read(g: Group) -> Group:
        for chat_id, last_at, is_lid in list(g.chats):
            if chat_id not in g.read:
                items = await waha.messages(chat_id, gte, plan_time, last_at)
                map_chat(g, chat_id, is_lid, items, lo, plan_time)
                g.read.add(chat_id)
        return g

    # Lid-only contacts first: a message may carry the phone (GOWS Info.SenderAlt), which makes the chat that
    # phone's contact, possibly one that also has a @c.us chat.
    lid_only = [g for k, g in groups.items() if k[0] == "l"]
    await asyncio.gather(*(read(g) for g in lid_only))
    for g in lid_only:
        if g.alt_phone:
            del groups[("l", g.lid)]
            owner = groups.get(("p", g.alt_phone))
            if owner is None:
                g.phone = g.alt_phone
                groups[("p", g.alt_phone)] = g
            else:
                owner.absorb(g)
    await migrated
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        channel_id = _uuid(tenant, args.channel, account or "")
        conn.execute("INSERT INTO channels (id, tenant_id, waha_session, account, waha_server, slug, name) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     (channel_id, tenant, args.channel, account, args.waha_url, f"{args.channel}-floor", args.channel))
    writer = Writer(args.database_url, tenant, channel_id, plan_time, args.timeout_minutes * 60)
    writer.thread.start()
    pending: list[Group] = []
    pending_rows = 0

    async def hand_over(batch: list[Group]) -> None:
        await asyncio.to_thread(writer.q.put, batch)

    for finished in asyncio.as_completed([read(g) for g in groups.values()]):
        g = await finished
        pending.append(g)
        pending_rows += len(g.rows)
        if pending_rows >= BATCH_MESSAGES:
            await hand_over(pending)
            pending, pending_rows = [], 0
        if writer.error is not None:
            break
    if pending:
        await hand_over(pending)
    await asyncio.to_thread(writer.q.put, None)
    await asyncio.to_thread(writer.thread.join)
    await waha.aclose()
    if writer.error is not None:
        raise writer.error
    return {"plan_time": plan_time, "window_start": gte, "window_end": plan_time, "tenant": tenant,
            "requests": waha.requests, "groups": len(groups), **writer.counts,
            "seconds": round(time.monotonic() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("channel")
    ap.add_argument("--waha-url", required=True)
    ap.add_argument("--database-url", required=True, help="PostgreSQL URL of an empty database")
    ap.add_argument("--days", type=int, default=180, help="0 = the whole history (as `waha-pipeline import`)")
    ap.add_argument("--concurrency", type=int, default=32, help="WAHA requests in flight at most")
    ap.add_argument("--page-size", type=int, default=500)
    ap.add_argument("--timeout-minutes", type=int, default=30, help="conversation session timeout")
    ap.add_argument("--tenant", default="default")
    args = ap.parse_args(argv)
    summary = asyncio.run(run(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
