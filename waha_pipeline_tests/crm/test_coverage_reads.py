"""Pins that a commit advances each chat's coverage only over what its fetch proved read (SPEC 8), and not at all
for chats it is told to hold back."""

from __future__ import annotations

from waha_pipeline.crm.store import CrmStore
from waha_pipeline.domain.batch import ChunkBatch
from waha_pipeline_tests.crm.conftest import PLAN_TIME, Importer, message, phone_contact, planned_chats

T0 = PLAN_TIME - 10 * 86400
START = PLAN_TIME - 180 * 86400


def _batch(importer: Importer, reads: dict, frozen: frozenset[str] = frozenset()) -> tuple[ChunkBatch, list[str]]:
    people = [phone_contact(f"491555000{n}", name=f"P{n}") for n in range(4)]
    ch = importer.channel_id
    messages = [message(ch, p, f"m{n}", T0 + n) for n, p in enumerate(people)]
    batch = importer.batch(people, messages)
    batch.planned_chats = planned_chats(people)
    batch.reads = reads  # type: ignore[attr-defined]
    batch.frozen_chats = frozen  # type: ignore[attr-defined]
    return batch, [c.chat_id for c in batch.planned_chats]


def test_coverage_grows_only_over_the_proven_part_of_each_read(store: CrmStore, importer: Importer) -> None:
    chats = [f"491555000{n}@c.us" for n in range(4)]
    window = (START, PLAN_TIME)
    reads = {
        chats[0]: [(window, PLAN_TIME)],  # read to its proven end
        chats[1]: [(window, T0 + 1)],  # pages ran out without evidence: proven to the newest read
        chats[2]: [(window, None)],  # nothing proven
    }  # chats[3]: no read recorded: nothing proven either
    batch, _ = _batch(importer, reads)
    store.commit_chunk(batch)
    covered = store.chat_coverage(importer.channel_id)
    assert covered[chats[0]].span == window
    assert covered[chats[1]].span == (START, T0 + 1)
    assert chats[2] not in covered and chats[3] not in covered
    assert store.counts(importer.channel_id)["messages"] == 4  # the rows themselves all commit


def test_an_unproven_read_never_moves_existing_coverage_back_or_past_the_newest_read(
    store: CrmStore, importer: Importer
) -> None:
    chat = "4915550001@c.us"
    first, _ = _batch(importer, {chat: [((START, PLAN_TIME), T0)]})
    store.commit_chunk(first)
    again, _ = _batch(importer, {chat: [((T0, PLAN_TIME), None)]})
    store.commit_chunk(again)
    assert store.chat_coverage(importer.channel_id)[chat].span == (START, T0)


def test_held_back_chats_keep_their_coverage(store: CrmStore, importer: Importer) -> None:
    chats = [f"491555000{n}@c.us" for n in range(4)]
    window = (START, PLAN_TIME)
    first, _ = _batch(importer, {c: [(window, T0)] for c in chats})
    store.commit_chunk(first)
    again, _ = _batch(importer, {c: [((T0, PLAN_TIME), PLAN_TIME)] for c in chats}, frozenset(chats[:2]))
    store.commit_chunk(again)
    covered = store.chat_coverage(importer.channel_id)
    assert [covered[c].span for c in chats] == [(START, T0)] * 2 + [window] * 2


def test_a_batch_without_reads_covers_its_window(store: CrmStore, importer: Importer) -> None:
    batch, chats = _batch(importer, {})
    del batch.reads  # type: ignore[attr-defined]
    store.commit_chunk(batch)
    assert {store.chat_coverage(importer.channel_id)[c].span for c in chats} == {(START, PLAN_TIME)}
