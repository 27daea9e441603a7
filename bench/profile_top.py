#!/usr/bin/env python
"""Summarise a py-spy `--format raw` (collapsed stacks) profile written by `bench/run.py --profile DIR`.

    python bench/profile_top.py DIR/import-seed.collapsed.txt [--top 25] [--match waha_pipeline]

Prints the functions with the most self samples, and the frames matching --match with the most inclusive
samples (each stack counted once per frame). Stdlib only.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("site-packages/", "/waha_pipeline/", "lib/python3.11/"):
        if marker in file:
            file = ("waha_pipeline/" if marker == "/waha_pipeline/" else "") + file.split(marker, 1)[1]
            break
    return f"{m['func']} ({file})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="waha_pipeline")
    args = ap.parse_args()
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    idle = 0
    with open(args.path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(n)
            total += count
            frames = [_short(fr) for fr in stack.split(";")]
            frames = [fr for fr in frames if not fr.startswith("process ") and not fr.startswith("thread ")]
            if not frames:
                continue
            leaf = frames[-1]
            if any(w in leaf for w in ("select (", "poll (", "epoll", "_run_once", "wait (threading")):
                idle += count
            self_c[leaf] += count
            for fr in set(frames):
                if args.match in fr:
                    incl[fr] += count
    print(f"{total} samples ({idle} in select/poll/wait leaves)")
    print(f"\ntop {args.top} by self samples:")
    for fr, c in self_c.most_common(args.top):
        print(f"{c:7d} {100 * c / total:5.1f}%  {fr}")
    print(f"\ntop {args.top} '{args.match}' frames by inclusive samples:")
    for fr, c in incl.most_common(args.top):
        print(f"{c:7d} {100 * c / total:5.1f}%  {fr}")


if __name__ == "__main__":
    main()
