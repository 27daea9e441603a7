"""Fault injection for the WAHA simulator: what can go wrong, decided per request, replayable from a seed.

Why declarative and hashed: a failing import test must replay exactly. Each request's fate is a pure function
of (seed, method, path + sorted query, n), where n counts how often that exact request has been seen since the
fault set was last installed. Concurrency order therefore does not matter, and a retry of the same request
gets a fresh draw.

Scopes (documented in `Faults`):
  * latency_ms / jitter_ms / max_concurrent / down act on every WAHA request (/api/..., /ping, /health):
    they model the server's speed and capacity;
  * error_rate / rate_limit_rate / hang_rate / reset_rate / garbage_rate act only on the endpoint kinds in
    `only_kinds`;
  * /_sim control routes are never faulted, delayed or capped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("sessions", "chats", "messages", "lids", "other")  # endpoint kinds, as in the request stats
DEFAULT_ONLY_KINDS = ("messages", "chats", "lids")
FAULT_COUNTERS = ("5xx", "429", "hang", "reset", "html", "down", "garbage")
SERVER_ERRORS = (500, 502, 503)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}

# outcomes of one decision
NONE, RESET, HANG, RATE_LIMIT, SERVER_ERROR, GARBAGE = "none", "reset", "hang", "429", "5xx", "garbage"


@dataclass
class Faults:
    """The active fault set. Treat it as a value: install a new one with `SimulatorHandle.set_faults` or
    `POST /_sim/faults` (that also restarts the per-request draw counters, so a sequence replays).

    Not frozen only because tests may tweak `latency_ms` in place; such edits skip validation and keep the
    counters.
    """

    latency_ms: float = 0.0  # added to every WAHA request (an asyncio sleep)
    jitter_ms: float = 0.0  # plus uniform [0, jitter_ms), drawn from the request hash
    max_concurrent: int | None = None  # requests beyond this wait (WAHA's capacity); never an error
    error_rate: float = 0.0  # share answered 500/502/503 (uniform among the three)
    html_error_rate: float = 0.0  # share OF THOSE 5xx answered with an HTML body (a proxy in front of WAHA)
    rate_limit_rate: float = 0.0  # share answered 429 with Retry-After
    retry_after_s: int = 1
    hang_rate: float = 0.0  # share that sleeps hang_s, then answers normally (unless the client gave up)
    hang_s: float = 30.0
    reset_rate: float = 0.0  # share whose TCP connection is reset (RST) without any HTTP response
    # share answered 200 with content-type text/html and an HTML page (a misconfigured proxy / captive portal)
    garbage_rate: float = 0.0
    only_kinds: tuple[str, ...] = DEFAULT_ONLY_KINDS  # endpoint kinds the five rates above apply to
    down: bool = False  # every WAHA request answers 503 at once (see also SimulatorHandle.down: no listener)
    seed: int | None = None  # None: the dataset's seed

    def __post_init__(self) -> None:
        self.only_kinds = tuple(self.only_kinds)
        self.validate()

    def validate(self) -> None:
        for name in ("error_rate", "html_error_rate", "rate_limit_rate", "hang_rate", "reset_rate", "garbage_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {v!r}")
        if self.error_rate + self.rate_limit_rate + self.hang_rate + self.reset_rate + self.garbage_rate > 1.0 + 1e-9:
            raise ValueError("error_rate + rate_limit_rate + hang_rate + reset_rate + garbage_rate must not exceed 1")
        for name in ("latency_ms", "jitter_ms", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1 (or null for no cap)")
        unknown = set(self.only_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"only_kinds: unknown kind(s) {sorted(unknown)}; one of {', '.join(FAULT_KINDS)}")

    @property
    def random(self) -> bool:
        """True when some request outcome must be drawn (a rate or jitter is set)."""
        return bool(self.error_rate or self.rate_limit_rate or self.hang_rate or self.reset_rate or self.garbage_rate
                    or self.jitter_ms)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["only_kinds"] = list(self.only_kinds)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Faults | None = None) -> Faults:
        """A validated Faults from JSON; with `base`, `data` patches it (absent keys keep base's values)."""
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault field(s) {sorted(unknown)}; known: {', '.join(sorted(names))}")
        merged = {**(base.to_dict() if base is not None else {}), **data}
        try:
            kw: dict[str, Any] = {}
            for k, v in merged.items():
                if k in ("latency_ms", "jitter_ms", "error_rate", "html_error_rate", "rate_limit_rate", "hang_rate",
                         "hang_s", "reset_rate", "garbage_rate"):
                    kw[k] = float(v)
                elif k in ("max_concurrent", "seed"):
                    kw[k] = None if v is None or (k == "max_concurrent" and v == 0) else int(v)
                elif k == "retry_after_s":
                    kw[k] = int(v)
                elif k == "down":
                    if not isinstance(v, bool):
                        raise ValueError("down must be true or false")
                    kw[k] = v
                elif k == "only_kinds":
                    if isinstance(v, str):
                        v = [s for s in v.split(",") if s]
                    kw[k] = tuple(str(s) for s in v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad fault value: {exc}") from None
        return cls(**kw)

    def replace(self, **patch: Any) -> Faults:
        return dataclasses.replace(self, **patch)  # __post_init__ validates


@dataclass(frozen=True)
class Decision:
    """The fate of one request."""

    outcome: str = NONE
    delay_s: float = 0.0  # latency + jitter, slept before the outcome
    status: int = 0  # for 5xx / 429
    html: bool = False


NO_FAULT = Decision()


@dataclass
class Decider:
    """Draws decisions; `seen` is the per-request-key counter n (reset whenever a new fault set is installed)."""

    seed: int
    seen: dict[str, int] = field(default_factory=dict)

    def draws(self, method: str, path: str, query_string: bytes) -> tuple[float, float, float, float]:
        key = f"{method} {path}?{canonical_query(query_string)}"
        n = self.seen.get(key, 0)
        self.seen[key] = n + 1
        digest = hashlib.blake2b(f"{self.seed}\x00{key}\x00{n}".encode(), digest_size=32).digest()
        return tuple(x / 2.0**64 for x in struct.unpack("<4Q", digest))  # type: ignore[return-value]

    def decide(self, f: Faults, method: str, path: str, query_string: bytes, faultable: bool) -> Decision:
        u, u_status, u_html, u_jitter = self.draws(method, path, query_string)
        delay = (f.latency_ms + u_jitter * f.jitter_ms) / 1000.0
        if faultable:
            edge = f.reset_rate
            if u < edge:
                return Decision(RESET, delay)
            edge += f.hang_rate
            if u < edge:
                return Decision(HANG, delay)
            edge += f.rate_limit_rate
            if u < edge:
                return Decision(RATE_LIMIT, delay, 429)
            edge += f.error_rate
            if u < edge:
                return Decision(SERVER_ERROR, delay, SERVER_ERRORS[min(2, int(u_status * 3))],
                                u_html < f.html_error_rate)
            edge += f.garbage_rate  # last: adding it leaves every other fault's draws unchanged
            if u < edge:
                return Decision(GARBAGE, delay, 200, True)
        return Decision(NONE, delay)


def canonical_query(query_string: bytes) -> str:
    """The query with pairs sorted and the api key dropped, so parameter order never changes a draw."""
    if not query_string:
        return ""
    pairs = [p for p in query_string.decode("latin-1").split("&") if p and not p.startswith("x-api-key=")]
    return "&".join(sorted(pairs))


GARBAGE_BODY = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><h1>Proxy authentication "
                b"required</h1><p>Please sign in to continue.</p></body></html>\n")


def html_body(status: int) -> bytes:
    reason = _REASONS.get(status, "Error")
    return f"<html><body><h1>{status} {reason}</h1></body></html>".encode()


# ---- command line (wired by the CLI owner into `waha-pipeline simulate`)

def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return v


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"comma-separated subset of {','.join(FAULT_KINDS)}, got {text!r}")
    return kinds


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fault-injection flags (an argument group) to `parser`; read them back with faults_from_args."""
    d = Faults()
    g = parser.add_argument_group("fault injection (deterministic from --fault-seed, default the dataset seed)")
    g.add_argument("--latency-ms", type=_non_negative, default=d.latency_ms, help="added to every WAHA request")
    g.add_argument("--jitter-ms", type=_non_negative, default=d.jitter_ms, help="plus uniform [0, N) ms")
    g.add_argument("--max-concurrent", type=_positive_int, default=None,
                   help="requests served at once; more wait (WAHA capacity)")
    g.add_argument("--error-rate", type=_rate, default=d.error_rate, help="share answered 500/502/503")
    g.add_argument("--html-error-rate", type=_rate, default=d.html_error_rate,
                   help="share of those 5xx with an HTML body")
    g.add_argument("--rate-limit-rate", type=_rate, default=d.rate_limit_rate,
                   help="share answered 429 with Retry-After")
    g.add_argument("--retry-after-s", type=int, default=d.retry_after_s, help="Retry-After of the 429s (seconds)")
    g.add_argument("--hang-rate", type=_rate, default=d.hang_rate, help="share that hangs --hang-s, then answers")
    g.add_argument("--hang-s", type=_non_negative, default=d.hang_s)
    g.add_argument("--reset-rate", type=_rate, default=d.reset_rate,
                   help="share whose connection is reset with no response")
    g.add_argument("--garbage-rate", type=_rate, default=d.garbage_rate,
                   help="share answered 200 with an HTML page instead of JSON (a misconfigured proxy)")
    g.add_argument("--fault-kinds", type=_kinds, default=d.only_kinds,
                   help=f"endpoint kinds the rates apply to (default {','.join(d.only_kinds)}; "
                        f"any of {','.join(FAULT_KINDS)})")
    g.add_argument("--fault-seed", type=int, default=None, help="seed of the fault draws (default: --seed)")
    g.add_argument("--down", action="store_true", help="answer every WAHA request 503 at once")


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The Faults of parsed add_fault_arguments flags; ValueError when the rates add up to more than 1."""
    return Faults(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, max_concurrent=args.max_concurrent,
                  error_rate=args.error_rate, html_error_rate=args.html_error_rate,
                  rate_limit_rate=args.rate_limit_rate, retry_after_s=args.retry_after_s, hang_rate=args.hang_rate,
                  hang_s=args.hang_s, reset_rate=args.reset_rate, garbage_rate=args.garbage_rate,
                  only_kinds=tuple(args.fault_kinds),
                  down=args.down, seed=args.fault_seed)
