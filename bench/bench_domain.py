"""Throughput of the per-message domain stages on synthetic rows (not a test).

Run: python bench/bench_domain.py [rows]. Prints CPU and wall seconds per stage.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import orjson
import pandas as pd

from waha_pipeline.domain.messages import map_messages
from waha_pipeline.domain.sessions import assign_sessions


def synthetic_fetch(n: int, chats: int = 5000, seed: int = 1) -> pd.DataFrame:
    """GOWS-shaped payloads; each chat talks in bursts (a message every 0-20 min, a new burst every ~3 days)."""
    rng = np.random.default_rng(seed)
    chat_ids = [f"55119{i:07d}@c.us" for i in range(chats)]
    chat_of = rng.integers(0, chats, n)
    gaps = np.where(rng.random(n) < 0.1, rng.integers(86_400, 6 * 86_400, n), rng.integers(0, 1200, n))
    order = np.argsort(chat_of, kind="stable")
    ts = np.empty(n, dtype=np.int64)
    ts[order] = 1_700_000_000 + np.cumsum(gaps[order]) % 60_000_000
    payloads = []
    for i in range(n):
        c = chat_ids[chat_of[i]]
        payloads.append(
            orjson.dumps(
                {
                    "id": f"{'true' if i % 3 == 0 else 'false'}_{c}_3A5F{i:012X}", "timestamp": int(ts[i]), "from": c,
                    "fromMe": i % 3 == 0, "source": "app", "body": "Boa tarde, vocês entregam em Campinas?",
                    "hasMedia": False, "ack": 3, "ackName": "READ",
                    "_data": {
                        "Info": {"Chat": c, "Sender": c, "IsFromMe": False, "ID": f"3A5F{i:012X}", "Type": "text",
                                 "PushName": "Maria", "Timestamp": "2025-10-15T12:15:23-03:00"},
                        "Message": {"conversation": "Boa tarde, vocês entregam em Campinas?"},
                    },
                }
            ).decode()
        )
    return pd.DataFrame({"chat_id": pd.array([chat_ids[j] for j in chat_of], dtype="string"), "payload": payloads})


def _timed(label: str, fn):  # noqa: ANN001, ANN202 - a tiny bench helper
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    print(f"{label}: cpu {time.process_time() - cpu:.2f}s, wall {time.perf_counter() - wall:.2f}s")
    return result


def main(n: int = 1_000_000) -> None:
    fetched = synthetic_fetch(n)
    mapped = _timed(
        f"map_messages {n:,} rows",
        lambda: map_messages(fetched, channel_id="ch", window_start=None, window_end=1_800_000_000),
    )
    messages, rejects, dropped = mapped.messages, mapped.rejects, mapped.dropped_outside_window
    messages["contact_id"] = messages["chat_id"]
    _, sessions = _timed(
        f"assign_sessions {len(messages):,} rows",
        lambda: assign_sessions(messages, channel_id="ch", timeout_minutes=30, plan_time=1_800_000_000),
    )
    print(f"{len(messages):,} messages, {len(rejects)} rejects, {dropped} dropped, {len(sessions):,} sessions")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
