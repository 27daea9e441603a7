"""Pins channel planning: slugs and chunk keys, the window, which chats are skipped and counted, identity
resolution from the lid map, and chunking (a contact's chats never split; order of the chat list irrelevant)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waha_pipeline.domain.coverage import Coverage
from waha_pipeline.domain.planning import (
    ChannelPlan,
    PlannedChat,
    channel_slug,
    chat_fingerprint,
    chunk_key,
    plan_channel,
    plan_window,
)

# ---------------------------------------------------------------------------------------------------------------
# FIXTURES

PLAN_TIME = 1_760_000_000


def plan(raw_chats: list[dict], lid_to_phone: dict[str, str | None] | None = None, **kw: object) -> ChannelPlan:
    args: dict = dict(
        waha_session="acme", plan_time=PLAN_TIME, days=180, chunk_size=50, session_timeout_minutes=30,
        include_groups=False,
    )
    args.update(kw)
    return plan_channel(raw_chats, lid_to_phone or {}, **args)


def all_chats(p: ChannelPlan) -> list[PlannedChat]:
    return [c for chunk in p.chunks for c in chunk.chats]


def contact_of(c: PlannedChat) -> str:
    return c.phone or c.lid or c.group_id or c.chat_id


# ---------------------------------------------------------------------------------------------------------------
# TESTS: slugs, keys, windows

SLUG_CASES = [
    ("acme-sales", "acme-sales"),
    ("default", "default"),
    ("Acme Sales!", "acme-sales-"),
    ("acme_sales", "acme-sales-"),
    ("ACME", "acme-"),
    ("vendas.sp", "vendas-sp-"),
    ("!!!", ""),
    ("", ""),
    ("São Paulo", "s-o-paulo-"),
    ("x" * 61, "x" * 53 + "-"),
]


@pytest.mark.parametrize(("session", "prefix"), SLUG_CASES, ids=[c[0][:20] or "empty" for c in SLUG_CASES])
def test_channel_slug_shape(session: str, prefix: str) -> None:
    slug = channel_slug(session)
    assert re.fullmatch(r"[a-z0-9-]{1,60}", slug), slug
    assert slug.startswith(prefix)
    if session and session == prefix:
        assert slug == session  # a valid slug is kept as is
    else:
        assert re.fullmatch(r"[0-9a-f]{6}", slug.removeprefix(prefix))  # lossy: hash suffix


def test_lossy_slugs_do_not_collide() -> None:
    names = ["Acme Sales", "acme sales", "acme_sales", "acme.sales", "ACME-SALES", "acme-sales", "x" * 61, "x" * 62]
    slugs = [channel_slug(n) for n in names]
    assert len(set(slugs)) == len(names), slugs


@given(st.text(max_size=80))
def test_channel_slug_always_valid(session: str) -> None:
    assert re.fullmatch(r"[a-z0-9-]{1,60}", channel_slug(session))


def test_chunk_key() -> None:
    assert chunk_key("acme", 0) == "acme.c0000"
    assert chunk_key("acme", 12) == "acme.c0012"


WINDOW_CASES = [(180, (PLAN_TIME - 180 * 86_400, PLAN_TIME)), (1, (PLAN_TIME - 86_400, PLAN_TIME)), (0, (None, PLAN_TIME))]


@pytest.mark.parametrize(("days", "window"), WINDOW_CASES, ids=["180d", "1d", "whole-history"])
def test_plan_window(days: int, window: tuple[int | None, int]) -> None:
    assert plan_window(PLAN_TIME, days) == window


def test_plan_window_rejects_negative_days() -> None:
    with pytest.raises(ValueError, match="days"):
        plan_window(PLAN_TIME, -1)


# ---------------------------------------------------------------------------------------------------------------
# TESTS: filtering, identity, dedupe


def test_skipped_kinds_are_counted() -> None:
    raw = [
        {"id": "5511@c.us"},
        {"id": "120363@g.us"},
        {"id": "120364@g.us"},
        {"id": "status@broadcast"},
        {"id": "123@broadcast"},
        {"id": "999@newsletter"},
        {"id": "x@example.com"},
        {"id": None},
        {"name": "no id"},
        "not a dict",
        {"id": "5511@s.whatsapp.net"},  # duplicate of the first once normalized
    ]
    p = plan(raw)  # type: ignore[arg-type]
    assert [c.chat_id for c in all_chats(p)] == ["5511@c.us"]
    assert p.skipped == {
        "broadcast": 1, "duplicate": 1, "group": 2, "newsletter": 1, "no_id": 3, "status": 1, "unknown": 1,
    }


def test_groups_imported_when_asked() -> None:
    p = plan([{"id": "120363@g.us", "name": "Equipe"}, {"id": "5511@c.us"}], include_groups=True)
    group = next(c for c in all_chats(p) if c.kind == "group")
    assert group == PlannedChat("120363@g.us", "group", "Equipe", phone=None, lid=None, group_id="120363@g.us")
    assert "group" not in p.skipped


IDENTITY_CASES = [
    ("direct, no lid", {"id": "5511@c.us"}, {}, ("direct", "5511", None)),
    ("direct, lid known", {"id": "5511@c.us"}, {"99": "5511"}, ("direct", "5511", "99")),
    ("lid, phone known", {"id": "99@lid"}, {"99": "5511"}, ("lid", "5511", "99")),
    ("lid, phone unknown", {"id": "99@lid"}, {"99": None}, ("lid", None, "99")),
    ("lid, not in map", {"id": "99@lid"}, {}, ("lid", None, "99")),
    ("map in jid form", {"id": "99@lid"}, {"99@lid": "5511@c.us"}, ("lid", "5511", "99")),
    ("object id", {"id": {"_serialized": "5511@c.us"}}, {}, ("direct", "5511", None)),
]


@pytest.mark.parametrize(("raw", "lids", "expected"), [c[1:] for c in IDENTITY_CASES], ids=[c[0] for c in IDENTITY_CASES])
def test_identity_from_lid_map(raw: dict, lids: dict, expected: tuple) -> None:
    (chat,) = all_chats(plan([raw], lids))
    assert (chat.kind, chat.phone, chat.lid) == expected


def test_duplicate_listing_keeps_the_real_name_in_any_order() -> None:
    listings = [{"id": "5511@c.us", "name": "+55 11"}, {"id": "5511@s.whatsapp.net", "name": "Maria"}, {"id": "5511@c.us"}]
    for order in (listings, listings[::-1], listings[1:] + listings[:1]):
        (chat,) = all_chats(plan(order))
        assert chat.name == "Maria"


def test_window_and_settings_recorded() -> None:
    p = plan([{"id": "5511@c.us"}], days=0, session_timeout_minutes=45, waha_session="Acme Sales!")
    assert (p.window_start, p.window_end, p.plan_time) == (None, PLAN_TIME, PLAN_TIME)
    assert p.session_timeout_minutes == 45
    assert p.chunks[0].key == f"{channel_slug('Acme Sales!')}.c0000"


# ---------------------------------------------------------------------------------------------------------------
# TESTS: chunking


def test_chunk_sizes_and_keys() -> None:
    raw = [{"id": f"55{i:04d}@c.us"} for i in range(7)]
    p = plan(raw, chunk_size=3)
    assert [len(c.chats) for c in p.chunks] == [3, 3, 1]
    assert [c.key for c in p.chunks] == ["acme.c0000", "acme.c0001", "acme.c0002"]
    assert [c.index for c in p.chunks] == [0, 1, 2]
    assert all_chats(p) == sorted(all_chats(p), key=lambda c: c.chat_id)


def test_contact_group_closes_chunk_early_and_big_group_stands_alone() -> None:
    raw = [{"id": "5501@c.us"}, {"id": "5502@c.us"}, {"id": "5503@c.us"}, {"id": "91@lid"}, {"id": "92@lid"}]
    p = plan(raw, {"91": "5503", "92": "5503"}, chunk_size=2)
    assert [c.chat_ids for c in p.chunks] == [["5501@c.us", "5502@c.us"], ["5503@c.us", "91@lid", "92@lid"]]


def test_chunk_closes_before_a_contact_would_overflow_it() -> None:
    p = plan([{"id": "5501@c.us"}, {"id": "5502@c.us"}, {"id": "91@lid"}], {"91": "5502"}, chunk_size=2)
    assert [c.chat_ids for c in p.chunks] == [["5501@c.us"], ["5502@c.us", "91@lid"]]


def test_empty_chat_list() -> None:
    p = plan([])
    assert p.chunks == () and p.skipped == {}


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        plan([], chunk_size=0)


# Random chat lists: phones, lids (mapped to some phone, to none, or unmapped), groups, junk and duplicates.
phones = st.sampled_from([f"55{i:03d}" for i in range(6)])
lids = st.sampled_from([f"9{i:03d}" for i in range(8)])
raw_chat = st.one_of(
    phones.map(lambda p: {"id": f"{p}@c.us", "name": None}),
    phones.map(lambda p: {"id": {"_serialized": f"{p}@s.whatsapp.net"}, "name": "N"}),
    lids.map(lambda lid: {"id": f"{lid}@lid", "name": None}),
    st.sampled_from([{"id": "1203@g.us"}, {"id": "status@broadcast"}, {"id": None}, {"id": "7@newsletter"}]),
)
scenario = st.tuples(
    st.lists(raw_chat, max_size=40),
    st.dictionaries(lids, st.one_of(st.none(), phones), max_size=12),
    st.integers(1, 6),
    st.booleans(),
    st.randoms(use_true_random=False),
)


@settings(max_examples=120, deadline=None)
@given(scenario)
def test_property_contact_never_split_and_sizes_respected(case: tuple) -> None:
    raw, lid_map, size, groups, _ = case
    p = plan(raw, lid_map, chunk_size=size, include_groups=groups)
    owner: dict[str, int] = {}
    for chunk in p.chunks:
        contacts = {contact_of(c) for c in chunk.chats}
        for contact in contacts:
            assert owner.setdefault(contact, chunk.index) == chunk.index, f"contact {contact} split over chunks"
        assert chunk.chats, "no empty chunk"
        assert len(chunk.chats) <= size or len(contacts) == 1
    for before, after in zip(p.chunks, p.chunks[1:]):
        first = contact_of(after.chats[0])
        group_len = sum(contact_of(c) == first for c in after.chats)
        assert len(before.chats) + group_len > size, "a chunk closed before it was full"
    chat_ids = [c.chat_id for c in all_chats(p)]
    assert len(chat_ids) == len(set(chat_ids))
    assert len(chat_ids) + sum(p.skipped.values()) == len(raw)


@settings(max_examples=120, deadline=None)
@given(scenario)
def test_property_input_order_does_not_matter(case: tuple) -> None:
    raw, lid_map, size, groups, rnd = case
    shuffled = list(raw)
    rnd.shuffle(shuffled)
    lid_items = list(lid_map.items())
    rnd.shuffle(lid_items)
    assert plan(shuffled, dict(lid_items), chunk_size=size, include_groups=groups) == plan(
        raw, lid_map, chunk_size=size, include_groups=groups
    )


def test_duplicate_names_in_opposite_orders_plan_the_same() -> None:
    """Guard: two listings of one chat with different names in opposite orders still plan the same."""
    a = [{"id": "5511@c.us", "name": "B"}, {"id": "5511@c.us", "name": "A"}]
    assert plan(a) == plan(a[::-1])


# ---------------------------------------------------------------------------------------------------------------
# TESTS: leaving up-to-date contacts out of a re-plan

LATER = PLAN_TIME + 3_600
CHATS = [
    {"id": "5511900000001@c.us", "name": "Ana", "conversationTimestamp": PLAN_TIME - 100},
    {"id": "900001@lid", "name": None, "conversationTimestamp": PLAN_TIME - 50},  # Ana's lid chat
    {"id": "5511900000002@c.us", "name": "Bia", "conversationTimestamp": PLAN_TIME - 10},
    {"id": "5511900000003@c.us", "name": "Caio", "conversationTimestamp": PLAN_TIME - 10},
]
LIDS = {"900001@lid": "5511900000001@c.us"}


def known_after(first: ChannelPlan, timeout: int = 30) -> dict[str, Coverage]:
    """The coverage the chunks of `first` leave behind once committed."""
    return {c.chat_id: Coverage((first.window_start, first.window_end), True, chat_fingerprint(c, timeout))
            for c in all_chats(first)}


def test_replan_leaves_out_contacts_with_nothing_new() -> None:
    first = plan(CHATS, LIDS)
    again = plan(CHATS, LIDS, plan_time=LATER, known=known_after(first))
    assert again.chunks == ()
    assert again.skipped == {"up_to_date": 4}


def test_one_new_message_brings_back_its_whole_contact() -> None:
    first = plan(CHATS, LIDS)
    chats = [dict(c, conversationTimestamp=LATER - 5) if c["id"] == "900001@lid" else c for c in CHATS]
    again = plan(chats, LIDS, plan_time=LATER, known=known_after(first))
    assert sorted(c.chat_id for c in all_chats(again)) == ["5511900000001@c.us", "900001@lid"]
    assert again.skipped == {"up_to_date": 2}


@pytest.mark.parametrize(
    ("change", "due"),
    [
        (lambda chats, lids, kw: (chats[:2] + [dict(chats[2], name="Bia Souza")] + chats[3:], lids, kw),
         ["5511900000002@c.us"]),
        (lambda chats, lids, kw: (chats, {**lids, "900003@lid": "5511900000003@c.us"}, kw),
         ["5511900000003@c.us"]),  # the phone contact now carries a lid
        (lambda chats, lids, kw: (chats[:3] + [{k: v for k, v in chats[3].items() if k != "conversationTimestamp"}],
                                  lids, kw), ["5511900000003@c.us"]),
        (lambda chats, lids, kw: (chats, lids, {**kw, "session_timeout_minutes": 60}),
         ["5511900000001@c.us", "5511900000002@c.us", "5511900000003@c.us", "900001@lid"]),
        (lambda chats, lids, kw: (chats, lids, {**kw, "days": 365}),
         ["5511900000001@c.us", "5511900000002@c.us", "5511900000003@c.us", "900001@lid"]),
    ],
    ids=["renamed", "lid-learned", "no-chat-timestamp", "other-timeout", "wider-window"],
)
def test_what_makes_a_chat_due_again(change, due) -> None:
    first = plan(CHATS, LIDS)
    chats, lids, kw = change(CHATS, LIDS, {"plan_time": LATER})
    again = plan(chats, lids, known=known_after(first), **kw)
    assert sorted(c.chat_id for c in all_chats(again)) == due


def test_groups_are_always_replanned() -> None:
    chats = [*CHATS, {"id": "1203630001@g.us", "name": "Team", "conversationTimestamp": PLAN_TIME - 100}]
    first = plan(chats, LIDS, include_groups=True)
    again = plan(chats, LIDS, plan_time=LATER, include_groups=True, known=known_after(first))
    assert [c.chat_id for c in all_chats(again)] == ["1203630001@g.us"]


def test_webjs_timestamp_and_duplicate_listings() -> None:
    """WEBJS lists `timestamp`; a chat listed twice counts with its later time, and not at all without one."""
    first = plan(CHATS, LIDS)
    ana, lid, bia, caio = CHATS
    webjs = {k: v for k, v in bia.items() if k != "conversationTimestamp"} | {"timestamp": PLAN_TIME - 10}
    chats = [ana, lid, webjs, caio, dict(caio, conversationTimestamp=LATER - 1), dict(ana, conversationTimestamp=None)]
    again = plan(chats, LIDS, plan_time=LATER, known=known_after(first))
    assert sorted(c.chat_id for c in all_chats(again)) == ["5511900000001@c.us", "5511900000003@c.us", "900001@lid"]


def test_plan_keeps_the_chat_lists_last_message_time_per_chat() -> None:
    raw = [
        {"id": "5511900000001@c.us", "name": "A", "conversationTimestamp": 1_759_999_000},
        {"id": {"server": "c.us", "user": "5511900000002", "_serialized": "5511900000002@c.us"}, "timestamp": 1_759_998_000},
        {"id": "5511900000003@c.us", "name": "C"},
    ]
    at = {c.chat_id: c.last_message_at for c in all_chats(plan(raw))}
    assert at == {"5511900000001@c.us": 1_759_999_000, "5511900000002@c.us": 1_759_998_000, "5511900000003@c.us": None}


def test_fingerprint_ignores_the_last_message_time_and_is_stable_across_versions() -> None:
    """Coverage rows already in a CRM hold fingerprints of this exact form: a new field must not change them."""
    chat = PlannedChat("5511912345678@c.us", "direct", "Maria Souza", phone="5511912345678", lid="203949586712345")
    later = PlannedChat("5511912345678@c.us", "direct", "Maria Souza", phone="5511912345678", lid="203949586712345",
                        last_message_at=1_760_000_000)
    assert chat_fingerprint(chat, 30) == chat_fingerprint(later, 30) == "45a0afeedc7434e915a62e6049f809cc56d092fc"


def test_learned_phones_resolve_lid_chats_that_wahas_mapping_does_not_know() -> None:
    raw = [
        {"id": "900001@lid", "name": None, "conversationTimestamp": PLAN_TIME - 50},
        {"id": "900002@lid", "name": None, "conversationTimestamp": PLAN_TIME - 40},
        {"id": "5511900000001@c.us", "name": "Ana", "conversationTimestamp": PLAN_TIME - 30},
    ]
    waha = {"900001@lid": None, "900002@lid": "5511900000002@c.us"}
    learned = {"900001": "5511900000001", "900002": "5511900000009"}  # a phone given inside messages earlier
    p = plan(raw, waha, learned_phones=learned)
    chats = {c.chat_id: c for c in all_chats(p)}
    assert chats["900001@lid"].phone == "5511900000001"  # WAHA gives none: the learned phone
    assert chats["900002@lid"].phone == "5511900000002"  # WAHA gives one: WAHA's wins
    assert chats["5511900000001@c.us"].lid == "900001"
    # the lid chat and the phone's own chat are one contact, so they land in one chunk
    [chunk] = [k for k in p.chunks if "900001@lid" in k.chat_ids]
    assert "5511900000001@c.us" in chunk.chat_ids
