"""Artifacts built once, on real images: the CPU serving image before (99c9489: exports at
start, torch and transformers inside) and after (artifacts prepared at image build,
GRAFT_PREPARED=required), as loadtests/bench_serving_image.sh builds them.

    .venv/bin/python -m loadtests.bench_serving_image --runs 3 \\
        --image before=graft:before --image after=graft:after --out docs/BENCHMARKS.md

For each image: its size (`docker image inspect`, uncompressed), the gzip -6 size of
`docker save` (about what a node pulls), whether `import torch` and `import transformers`
work in it, the `du` of its GRAFT_ARTIFACTS and the raw.onnx files left there. Then
start-to-ready, a pod's start as closely as one machine shows it: from just before
`docker run -d --network host` of a fresh container (empty GRAFT_HOME, the image's own
entrypoint and settings) to the first 200 of GET /readyz, polled every 0.2 s. The runs
alternate the images (before, after, before, after, ...), so a host whose speed drifts
slows both alike. The last container of each image stays up for one POST /v1/embed with the
admin key. Needs a Docker engine; the host network ports --port and --port + 47000 (gRPC)
must be free.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loadtests.bench_families import cpu_flags
from loadtests.common import publish

BEGIN, END = "<!-- bench_serving_image:begin -->", "<!-- bench_serving_image:end -->"
ADMIN_KEY = "bench-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"  # the service wants >= 32 chars
EMBED_BODY = {"inputs": ["where is my parcel?"]}
INSPECT = (  # run inside each image, with sh as the entrypoint
    'for m in torch transformers; do if err=$(python -c "import $m" 2>&1); then echo "$m=yes"; '
    'elif echo "$err" | grep -q "No module named"; then echo "$m=no"; else echo "$m=error"; fi; done; '
    'a="${GRAFT_ARTIFACTS:-}"; '
    'if [ -n "$a" ] && [ -d "$a" ]; then echo "artifacts_kib=$(du -sk "$a" | cut -f1)"; '
    'echo "raw_onnx=$(find "$a" -name raw.onnx | wc -l)"; fi'
)


def docker(*args: str, check: bool = True, timeout: float | None = 120) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout).stdout


def size_mib(image: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image)) / 2**20


def gzip_mib(image: str) -> float:
    """gzip -6 of `docker save`, counted as it streams (nothing written to disk)."""
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    gz = subprocess.Popen(["gzip", "-6", "-c"], stdin=save.stdout, stdout=subprocess.PIPE)
    save.stdout.close()
    total = 0
    while chunk := gz.stdout.read(1 << 20):
        total += len(chunk)
    if gz.wait() or save.wait():
        raise RuntimeError(f"docker save {image} | gzip failed")
    return total / 2**20


def inspect(image: str) -> dict[str, str]:
    """torch/transformers importable, artifacts KiB and raw.onnx count, from inside the image."""
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", INSPECT, timeout=300)
    return dict(line.split("=", 1) for line in out.split() if "=" in line)


def http(port: int, path: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> tuple[int | None, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={
        "Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def running(name: str) -> bool:
    return docker("inspect", "-f", "{{.State.Running}}", name, check=False).strip() == "true"


def start_to_ready(image: str, name: str, port: int, limit: float) -> dict[str, float]:
    """Seconds from `docker run` to the container's first /readyz 200; the container stays up."""
    docker("rm", "-f", name, check=False)
    started = time.monotonic()
    docker("run", "-d", "--name", name, "--network", "host", "-e", "GRAFT_HOST=127.0.0.1",
           "-e", f"GRAFT_PORT={port}", "-e", f"GRAFT_GRPC_PORT={port + 47000}",
           "-e", f"GRAFT_ADMIN_KEY={ADMIN_KEY}", image)
    run_returned = time.monotonic() - started
    first_answer = None
    while time.monotonic() - started < limit:
        status, _ = http(port, "/readyz")
        now = time.monotonic() - started
        if status is not None and first_answer is None:
            first_answer = now
        if status == 200:
            return {"ready_s": now, "first_answer_s": first_answer, "docker_run_s": run_returned}
        if not running(name):
            logs = subprocess.run(["docker", "logs", "--tail", "40", name], capture_output=True, text=True).stderr
            docker("rm", "-f", name, check=False)
            raise RuntimeError(f"{image} exited before ready:\n{logs}")
        time.sleep(0.2)
    docker("rm", "-f", name, check=False)
    raise RuntimeError(f"{image}: no /readyz 200 in {limit:.0f} s")


def embed(port: int) -> dict[str, Any]:
    status, body = http(port, "/v1/embed", EMBED_BODY, timeout=60)
    if status != 200:
        return {"status": status, "error": body.decode(errors="replace")[:300]}
    out = json.loads(body)
    return {"status": status, "backbone": out.get("backbone"), "dim": out.get("dim"),
            "first": [round(v, 4) for v in out["embeddings"][0][:4]]}


def start_runs(images: dict[str, str], runs: int, port: int, limit: float) -> tuple[dict[str, Any], list[float]]:
    """`runs` starts per image, alternating the images; the last start of each also embeds.
    Returns per-label results and the 1-minute load average sampled after each start."""
    results: dict[str, Any] = {label: {"starts": []} for label in images}
    load = []
    for i in range(runs):
        for label, image in images.items():
            name = f"graft-bench-{label}"
            try:
                run = start_to_ready(image, name, port, limit)
                if i == runs - 1:
                    results[label]["embed"] = embed(port)
            finally:
                docker("rm", "-f", name, check=False)
            load.append(os.getloadavg()[0])
            results[label]["starts"].append(run)
            print(f"{label} run {i + 1}: ready {run['ready_s']:.1f} s (first answer "
                  f"{run['first_answer_s']:.1f} s), load {load[-1]:.2f}", flush=True)
    return results, load


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")


def table(images: dict[str, str], results: dict[str, Any], load: list[float], runs: int) -> str:
    lines = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu_model()}, {os.cpu_count()} "
             f"cores; lscpu flags (int8-relevant): {cpu_flags()}. 1-minute load average after each start: "
             f"{min(load):.1f}-{max(load):.1f}. {runs} starts per image, alternating the images.", "",
             "| image | size | gzip (docker save) | torch | transformers | artifacts (raw.onnx) "
             "| docker run to /readyz 200 | POST /v1/embed |",
             "|---|---:|---:|---|---|---|---|---|"]
    for label, image in images.items():
        r = results[label]
        ready = [s["ready_s"] for s in r["starts"]]
        gz = f"{r['gzip_mib']:,.0f} MiB" if r.get("gzip_mib") is not None else "–"
        kib = r["inside"].get("artifacts_kib")
        artifacts = f"{int(kib) / 1024:,.0f} MiB ({r['inside'].get('raw_onnx', '?')})" if kib else "–"
        e = r.get("embed", {})
        embedded = f"{e['status']}, {e.get('backbone')} dim {e.get('dim')}" if e.get("status") == 200 else str(e.get("status"))
        lines.append(f"| {label} (`{image}`) | {r['size_mib']:,.0f} MiB | {gz} | {r['inside'].get('torch', '?')} "
                     f"| {r['inside'].get('transformers', '?')} | {artifacts} | {statistics.median(ready):.1f} s "
                     f"(median of {len(ready)}: " + ", ".join(f"{s:.1f}" for s in ready) + f") | {embedded} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", default=[], metavar="LABEL=TAG",
                        help="an image to measure (repeat; default before=graft:before, after=graft:after)")
    parser.add_argument("--runs", type=int, default=3, help="starts per image")
    parser.add_argument("--port", type=int, default=3710, help="HTTP port on the host network (gRPC: +47000)")
    parser.add_argument("--limit", type=float, default=900, help="seconds a start may take")
    parser.add_argument("--no-gzip", action="store_true", help="skip `docker save | gzip` (a minute or more per GB)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    images = dict(item.split("=", 1) for item in (args.image or ["before=graft:before", "after=graft:after"]))

    results, load = start_runs(images, args.runs, args.port, args.limit)
    for label, image in images.items():
        results[label]["image_id"] = docker("image", "inspect", "--format", "{{.Id}}", image).strip()
        results[label]["size_mib"] = size_mib(image)
        results[label]["inside"] = inspect(image)
        results[label]["gzip_mib"] = None if args.no_gzip else gzip_mib(image)
        print(label, json.dumps({k: v for k, v in results[label].items() if k != "starts"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"images": images, "results": results, "load": load}, indent=1))
    publish(table(images, results, load, args.runs), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
