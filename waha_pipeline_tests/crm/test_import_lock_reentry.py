"""A process enters a channel's import lock it already holds (a CLI import runs its chunks in process, on other
threads). The holders may leave in any order: a SIGTERM ends the CLI's block before its chunks' blocks."""

from __future__ import annotations

import threading

from waha_pipeline.crm.store import CrmStore

SLUG = "demo-1a2b3c"


def test_the_first_holder_may_leave_first_and_the_last_one_out_releases(store: CrmStore) -> None:
    outer = store.import_lock(SLUG)
    outer.__enter__()
    inner_entered, outer_left, inner_left = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def chunk() -> None:
        try:
            with store.import_lock(SLUG):
                inner_entered.set()
                outer_left.wait(timeout=30)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:
            inner_left.set()

    worker = threading.Thread(target=chunk, daemon=True)
    worker.start()
    assert inner_entered.wait(timeout=30)
    outer.__exit__(None, None, None)
    assert store.import_lock_holder(SLUG) is not None  # the chunk still holds it
    outer_left.set()
    assert inner_left.wait(timeout=30)
    worker.join(timeout=30)
    assert errors == []
    assert store.import_lock_holder(SLUG) is None
