"""Summarise a py-spy collapsed-stack file (`py-spy record --format raw`): where the time goes.

    python benchmarks/profile_summary.py prof-hub-S300.txt [--top 30] [--match hub/]

Prints, per function (file:function), its share of all samples as self time (the function was
on top of the stack) and as inclusive time (anywhere on the stack, counted once per sample).
Line numbers are dropped so one function is one row.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent) + "/"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"].removeprefix(ROOT)
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{match['func']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default="", help="only rows whose file:function contains this")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in Path(args.path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    print(f"{total} samples")
    print(f"{'self %':>7} {'incl %':>7}  function")
    for name, count in own.most_common():
        if args.match not in name:
            continue
        print(f"{100 * count / total:7.1f} {100 * inclusive[name] / total:7.1f}  {name}")
        args.top -= 1
        if args.top <= 0:
            break
    print(f"\n{'incl %':>7}  function (inclusive, top)")
    shown = 0
    for name, count in inclusive.most_common():
        if args.match not in name:
            continue
        print(f"{100 * count / total:7.1f}  {name}")
        shown += 1
        if shown >= 40:
            break


if __name__ == "__main__":
    main()
