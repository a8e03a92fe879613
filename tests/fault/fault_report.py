"""Render the fault suite's results as the Markdown table of docs/reliability.md.

Usage::

    GOJOB_FAULT_REPORT=/tmp/fault.jsonl tox -e py3 -- tests/fault
    python tests/fault/fault_report.py /tmp/fault.jsonl

Each scenario appends one JSON line per store to the file named by ``GOJOB_FAULT_REPORT`` (see
``fault_support.Verdict.report``); this prints them as one table, in the order of the scenarios.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["baseline", "node killed + restarted", "store server restart", "store server down > lease",
         "cron across nodes, kill mid-fire",
         "cancel storm", "poison jobs", "corrupt records", "hostile gRPC input"]
STORES = ["memory", "valkey", "redis", "etcd", "postgres", "mysql", "sqlite"]
HEAD = ("| scenario | store | instances | faults | lost | duplicated | unexpected re-runs | explained re-runs "
        "| recovery p50 / max | result |")


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s" if x < 1 else f"{x:.2f} s"


def table(rows: list[dict]) -> str:
    def key(r: dict) -> tuple[int, int]:
        s = ORDER.index(r["scenario"]) if r["scenario"] in ORDER else len(ORDER)
        return s, STORES.index(r["store"]) if r["store"] in STORES else len(STORES)

    out = [HEAD, "|" + "---|" * HEAD.count(" | ") + "---|"]
    for r in sorted(rows, key=key):
        rec = "-" if r["recovery_p50_s"] is None else f"{_secs(r['recovery_p50_s'])} / {_secs(r['recovery_max_s'])}"
        result = "pass" if r["passed"] else f"**FAIL** ({r['problems']} problem(s))"
        out.append(f"| {r['scenario']} | {r['store']} | {r['instances']:,} | {r['faults']} | {r['lost']} "
                   f"| {r['duplicated']} | {r['unexpected_reruns']} | {r['explained_reruns']} | {rec} | {result} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
