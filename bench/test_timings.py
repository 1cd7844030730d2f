"""Summarise a test timing log (tests/conftest.py writes it where AITS_TEST_TIMINGS points).

    python bench/test_timings.py OUT/test-timings.jsonl [--top 20]

Prints how many tests finished and how, the tests still in flight when the log ends (a run cut
off by a timeout), the slowest tests, and the time per test function summed over its
parameters: what to trim or reorder when the GPU test subset does not fit its cap.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys


def summarise(path: str, top: int) -> str:
    started: dict[str, float] = {}
    seconds: dict[str, float] = collections.defaultdict(float)
    outcome: dict[str, str] = {}
    finished: set[str] = set()
    first = last = None
    with open(path) as log:
        for line in log:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by the kill
                continue
            first = event["t"] if first is None else first
            last = event["t"]
            test = event["test"]
            if event["when"] == "start":
                started[test] = event["t"]
                continue
            seconds[test] += event["seconds"]
            if event["when"] == "call":
                outcome.setdefault(test, event["outcome"])
            elif event["outcome"] == "skipped":  # skipped in setup: there is no call
                outcome[test] = "skipped"
            elif event["outcome"] == "failed":  # an error in setup or teardown
                outcome[test] = "error"
            if event["when"] == "teardown":
                finished.add(test)
    finished &= set(started)
    in_flight = sorted(set(started) - finished, key=lambda t: started[t])
    counts = collections.Counter(outcome.get(t, "passed") for t in finished)
    by_count = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    lines = [f"{len(finished)} tests finished ({', '.join(f'{n} {k}' for k, n in by_count)}) "
             f"in {0 if first is None else last - first:.0f} s of log"]
    if in_flight:
        lines.append(f"{len(in_flight)} still running when the log ends (started this many s into the log):")
        lines += [f"  {started[t] - first:7.1f}  {t}" for t in in_flight]
    lines.append(f"slowest {top} (setup + call + teardown, s):")
    lines += [f"  {s:7.2f}  {t}" for t, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]]
    by_function: dict[str, float] = collections.defaultdict(float)
    for t, s in seconds.items():
        by_function[t.split("[")[0]] += s
    lines.append(f"per test function, summed over its parameters (s), top {top}:")
    lines += [f"  {s:7.1f}  {f}" for f, s in sorted(by_function.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="the JSON-lines log written under AITS_TEST_TIMINGS")
    parser.add_argument("--top", type=int, default=20, help="rows in the slowest lists")
    args = parser.parse_args(argv)
    try:
        print(summarise(args.log, args.top))
    except FileNotFoundError:
        print(f"no test timing log at {args.log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
