"""Summarise the last `make load` run (locust's CSV) into docs/BENCHMARKS.md."""
from __future__ import annotations

import argparse
import csv
from datetime import datetime, timezone
from pathlib import Path

from loadtests.common import publish

BEGIN, END = "<!-- load:begin -->", "<!-- load:end -->"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", type=Path, default=Path("loadtests/results/load_stats.csv"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    with args.csv.open() as fh:
        rows = list(csv.DictReader(fh))
    lines = [
        f"`make load` on {datetime.now(timezone.utc):%Y-%m-%d} against `make serve` on 127.0.0.1 {args.note}".rstrip(),
        "",
        "| request | count | failures | requests/s | p50 (ms) | p95 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["Name"] == "Aggregated":
            name = "all"
        else:
            name = r["Name"] if r["Name"].startswith(r["Type"]) else f"{r['Type']} {r['Name']}"
        lines.append(f"| {name} | {r['Request Count']} | {r['Failure Count']} | {float(r['Requests/s']):.1f} | "
                     f"{r['50%']} | {r['95%']} | {r['99%']} |")
    table = "\n".join(lines)
    publish(table, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
