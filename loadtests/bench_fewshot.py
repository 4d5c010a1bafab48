"""How the setfit recipe (adapters/fewshot.py) was chosen, on reviews no bench scores:
draws of 8 Rotten Tomatoes reviews a class from reviews 4,000 on (draw d: the first 8 a class
of reviews 4,000 + 200d ..), scored on reviews 3,000-3,399, against a logistic regression on
the frozen vectors of the same 16 reviews. bench_autotl's reviews (the first 3,000) are never
read. `--configs` is a JSON list of SetFitParams overrides, e.g. '[{"lr": 1e-3}, {"lr": 3e-4}]'.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from loadtests.bench_autotl import per_class
from loadtests.data import rotten_tomatoes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--configs", default='[{}]', help="JSON list of SetFitParams overrides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    import torch

    from adapters.evaluation import evaluate
    from adapters.fewshot import SetFitParams, fit_head, train_setfit
    from models import load_backbone
    from service.settings import Settings

    torch.set_num_threads(args.threads)
    backbone = load_backbone("minilm-l6", Settings().home.resolve(), split_layers=2)
    reviews, labels = rotten_tomatoes(), ["fresh", "rotten"]
    dev = reviews[3000:3400]
    dev_texts, dev_y = [t for t, _ in dev], np.array([labels.index(label) for _, label in dev])
    dev_x = backbone.embed(dev_texts).vectors
    configs = json.loads(args.configs)
    gains: dict[str, list[float]] = {}
    for d in range(args.draws):
        few = per_class(reviews[4000 + 200 * d : 4200 + 200 * d], 8)
        texts, y = [t for t, _ in few], np.array([labels.index(label) for _, label in few])
        head = fit_head(backbone.embed(texts).vectors, y, 2, 1.0, 0)
        base = evaluate(dev_y, (dev_x @ head["weight"].T + head["bias"]).argmax(1), labels)["macro_f1"]
        hidden, row = backbone.hidden_states(texts), [f"draw {d}: head {base:.3f}"]
        for config in configs:
            p = SetFitParams(**{k: tuple(v) if k == "targets" else v for k, v in config.items()})
            t0 = time.perf_counter()
            trained = train_setfit(backbone.upper_module(), backbone.split_shape, hidden, y, [], np.array([], int),
                                   labels, p)
            seconds = time.perf_counter() - t0
            chunks = [dev_texts[i : i + 64] for i in range(0, len(dev_texts), 64)]
            vectors = np.concatenate([backbone.embed_deep(c, [trained.weights] * len(c)).vectors for c in chunks])
            f1 = evaluate(dev_y, (vectors @ trained.head["weight"].T + trained.head["bias"]).argmax(1),
                          labels)["macro_f1"]
            gains.setdefault(json.dumps(config), []).append(f1 - base)
            row.append(f"{json.dumps(config)} {f1:.3f} ({seconds:.1f} s)")
        print(" | ".join(row), flush=True)
    for config, g in gains.items():
        print(f"{config}: mean gain over the head {100 * np.mean(g):+.1f} points ({len(g)} draws)")


if __name__ == "__main__":
    main()
