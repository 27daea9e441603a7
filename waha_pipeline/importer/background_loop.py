"""An asyncio loop on a background thread, so synchronous Dagster code can keep WAHA fetches in flight.

The chunk loop submits the fetch of the next chunks while it maps and commits the current one; the WAHA
client's own semaphore still bounds how many requests run at once. The loop is uvloop's where it is installed:
its C transports and scheduler cost less CPU per page request than asyncio's selector loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from waha_pipeline.process_tuning import declare_asyncio_thread

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # e.g. on Windows, which uvloop does not support
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BackgroundLoop:
    def __init__(self) -> None:
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="waha-fetch-loop", daemon=True)

    def __enter__(self) -> BackgroundLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        declare_asyncio_thread()  # this thread's entry; it runs nothing but this loop
        self._loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        pending = asyncio.run_coroutine_threadsafe(_cancel_pending(), self._loop)
        try:
            pending.result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
