"""Offset paging of WAHA lists (chats, lids) and of one chat's messages to its proven end (SPEC 8).

Every page is one `RequestLoop.request`; this module decides which page to ask next and when a list or a chat ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from waha_pipeline.errors import WahaPermanentError
from waha_pipeline.waha.models import ChatRead, message_id_of, message_time_of
from waha_pipeline.waha.request_loop import Kind, PageTimeout, RequestLoop, expect_list

logger = logging.getLogger("waha_pipeline.waha.client")  # one logger for everything WahaClient does

MIN_MESSAGE_PAGE = 50
STALE_PAGES_LIMIT = 3  # consecutive non-empty pages without a new item: the server ignores `offset`
PROBE_EMPTY_PAGES = 2  # empty pages asked past an empty one before a chat's read ends without evidence of its end
MAX_PROBE_ROWS = 50_000  # store rows probed past the last message while the chat list says a later one exists
MAX_PROBE_PAGE = 8_192  # the largest page a probe asks for
MAX_CHATS = 1_000_000  # a chat list longer than this is taken for a server that never ends its list


async def page_all(
    loop: RequestLoop,
    kind: Kind,
    path: str,
    base: Mapping[str, str],
    session: str,
    page_size: int,
    key: Callable[[Any], str | None],
    *,
    max_items: int | None = None,
) -> list[Any]:
    """Offset paging of a list (chats, lids): `offset += limit` until an empty page; dedupe by `key` keeping
    the first occurrence; more than `max_items` items is a permanent error."""
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    limit, offset, stale = page_size, 0, 0
    seen: set[str] = set()
    items: list[Any] = []
    while True:
        params = {**base, "limit": str(limit), "offset": str(offset)}
        page = expect_list(await loop.request(kind, "GET", path, params=params, session=session), "GET", path)
        if not page:
            return items
        added = 0
        for item in page:
            item_key = key(item)
            if item_key is None or item_key not in seen:
                if item_key is not None:
                    seen.add(item_key)
                items.append(item)
                added += 1
        if max_items is not None and len(items) > max_items:
            raise WahaPermanentError(
                f"WAHA GET {path}: more than {max_items} items; the list does not end (raise the limit if it "
                "is real)",
                method="GET",
                path=path,
            )
        stale = check_stale(stale, added, path, offset)
        offset += limit


async def read_pages(
    loop: RequestLoop,
    path: str,
    base: Mapping[str, str],
    session: str,
    chat_id: str,
    page_size: int,
    *,
    gte: int | None,
    lte: int,
    last_at: int | None,
    encode: Callable[[Any], Any] | None = None,
    newest_first: bool = False,
    min_page_size: int = MIN_MESSAGE_PAGE,
    probe_empty_pages: int = PROBE_EMPTY_PAGES,
    max_probe_rows: int = MAX_PROBE_ROWS,
) -> ChatRead:
    """Offset paging of one chat's messages, oldest first, to its proven end (SPEC 8).

    The engines slice `limit`/`offset` in their store and drop the rows they cannot map afterwards
    (reactions, poll votes, protocol rows), so a page can be short or empty while later offsets still hold
    messages. The end rule:

    - an empty page ends the read at once, proven to `lte`, when the newest timestamp read is >= the target
      `min(last_at, lte)` (or the target lies before `gte`: the chat list says nothing is in the range);
    - otherwise further pages are asked at the following offsets, each twice the size of the one before (a
      run of dropped rows costs requests logarithmic in its length); a non-empty one resumes the paging at
      the normal size after the rows that probe spanned. Probing stops after `probe_empty_pages` empty pages,
      or, while the chat list's last-message time says a later message exists, once the probes spanned
      `max_probe_rows` rows; the read then ends unproven: proven only to the newest timestamp read
      (inclusive), or not at all when nothing was read;
    - a server that returns a chat newest first (WEBJS ignores `sortOrder`) gives no evidence for the end a
      last-message time could confirm: its read is always probed and never proven.

    A page that timed out caps every later page of the chat, probes included, at the halved limit.

    The clean case costs one request more than the data pages: the empty page after them.
    """
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    target = lte if last_at is None else min(last_at, lte)
    limit, offset, stale, empty, probed = page_size, 0, 0, 0, 0
    ceiling = max(page_size, MAX_PROBE_PAGE)  # the largest limit not known to time out
    seen: set[str] = set()
    items: list[Any] = []
    newest: int | None = None
    previous: int | None = None
    ordered = not newest_first
    while True:
        params = {**base, "limit": str(limit), "offset": str(offset)}
        can_shrink = limit > min_page_size
        try:
            data = await loop.request("messages", "GET", path, params=params, session=session,
                                       shrink_on_timeout=can_shrink, chat=chat_id)
        except PageTimeout:
            limit = ceiling = max(min_page_size, limit // 2)
            loop.stats.add("page_shrinks")
            logger.info("WAHA GET %s timed out at offset %d; retrying the page with limit %d", path, offset, limit)
            continue
        page = expect_list(data, "GET", path)
        if not page:
            reached = newest is not None and newest >= target
            if ordered and (reached or (gte is not None and target < gte)):
                return ChatRead(items, lte, newest)
            empty += 1
            probed += limit
            behind = last_at is not None and (newest is None or newest < target)
            if probed >= max_probe_rows or (not behind and empty > probe_empty_pages):
                logger.info("WAHA GET %s: pages ran out at offset %d without evidence of the chat's end "
                            "(newest read %s, last message listed %s)", path, offset, newest, last_at)
                proven = newest if ordered and newest is not None and (gte is None or newest >= gte) else None
                return ChatRead(items, None if proven is None else min(proven, lte), newest)
            offset += limit
            limit = min(max(min(limit * 2, MAX_PROBE_PAGE), page_size), ceiling)
            continue
        empty = probed = 0
        asked, limit = limit, min(page_size, ceiling)
        added = 0
        for item in page:
            item_key = message_id_of(item)
            if item_key is not None and item_key in seen:
                continue
            if item_key is not None:
                seen.add(item_key)
            at = message_time_of(item)
            if at is not None:
                if previous is not None and at < previous:
                    ordered = False
                previous = at
                newest = at if newest is None else max(newest, at)
            items.append(item if encode is None else encode(item))
            added += 1
        stale = check_stale(stale, added, path, offset)
        offset += asked


def check_stale(stale: int, added: int, path: str, offset: int) -> int:
    """Count pages in a row that brought nothing new; raise once they show the server ignores `offset`."""
    stale = stale + 1 if added == 0 else 0
    if stale >= STALE_PAGES_LIMIT:
        raise WahaPermanentError(
            f"WAHA GET {path}: {stale} pages in a row brought nothing new at offset {offset}; "
            "the server seems to ignore offset paging",
            method="GET",
            path=path,
        )
    return stale
