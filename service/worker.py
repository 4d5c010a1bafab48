"""Fine-tune workers: processes that claim jobs from the registry and train heads.

`python -m service.worker` runs one (the Kubernetes trainer Deployment runs only these);
the HTTP service starts GRAFT_TRAIN_WORKERS of them beside itself and restarts any that
die. Workers run at lower CPU priority with one thread each, so serving keeps its cores.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from adapters import zero_shot
from adapters.evaluation import evaluate, stratified_split
from adapters.format import Adapter, AdapterConfig, AdapterFormatError, decode, encode
from adapters.jobs import Claimed, JobQueue, LeaseLost, worker_id
from adapters.registry import NotFoundError, Registry, default_url
from adapters.training import Cancelled, EpochReport, TrainParams, continual_init, train_head
from models import Backbone, load_backbone
from service import metrics
from service.settings import Settings

log = logging.getLogger("service.worker")  # not __name__: it is __main__ under -m


class TrainingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.database_url or default_url(settings.home))
        self.queue = JobQueue(self.registry, lease_s=settings.job_lease_s, max_attempts=settings.job_max_attempts)
        self.id = worker_id()
        self._backbones: dict[str, Backbone] = {}

    def run_forever(self, stop: threading.Event) -> None:
        log.info("fine-tune worker %s polling for jobs", self.id)
        while not stop.is_set():
            try:
                claim = self.queue.claim(self.id)
            except Exception:
                log.warning("could not claim a job; retrying", exc_info=True)
                claim = None
            if claim is None:
                stop.wait(self.settings.job_poll_ms / 1000)
                continue
            self.run(claim)

    def run(self, claim: Claimed) -> None:
        log.info("job %s: training %s/%s", claim.job.id, claim.job.tenant, claim.job.adapter)
        beat = _Heartbeat(self.queue, claim, self.settings.job_lease_s / 3)
        beat.start()
        started, status = time.perf_counter(), "succeeded"
        try:
            self._train(claim, beat)
        except Cancelled:
            status = "cancelled"
            self._finish(claim, status)
        except LeaseLost:
            status = "lease_lost"
            log.warning("job %s: lease lost; another attempt owns it now", claim.job.id)
        except TrainingError as e:
            status = "failed"
            self._finish(claim, status, e.code, str(e))
        except Exception as e:  # a bug must fail the job, not the worker
            status = "failed"
            log.exception("job %s failed", claim.job.id)
            self._finish(claim, status, "internal", f"{type(e).__name__}: {e}")
        finally:
            beat.stop()
            metrics.finetune_job_seconds.labels(status).observe(time.perf_counter() - started)

    def _finish(self, claim: Claimed, status: str, code: str | None = None, message: str | None = None) -> None:
        try:
            self.queue.finish(claim, status, error_code=code, error_message=message)
        except LeaseLost:
            log.warning("job %s: lease lost before it could be marked %s", claim.job.id, status)

    # -- the work ------------------------------------------------------------------------

    def _train(self, claim: Claimed, beat: "_Heartbeat") -> None:
        job, q = claim.job, self.queue
        backbone = self._backbone(job.backbone)
        settings = {k: v for k, v in job.params.items() if v is not None}
        params = TrainParams(**{"standardize": backbone.kind == "image", **settings})
        # Examples hold a text or a base64 image; that string also keys the embedding cache.
        keys = [e["text"] if "text" in e else e["image"] for e in claim.examples]
        names = [e["label"] for e in claim.examples]
        labels = sorted(set(names))
        y = np.array([labels.index(n) for n in names])
        q.event(claim, "validation", {"examples": len(keys), "classes": len(labels),
                                      "per_class": {label: int((y == i).sum()) for i, label in enumerate(labels)}})
        x = self._embed(backbone, keys, beat)
        train_idx, val_idx = stratified_split(y, params.val_fraction, params.seed)
        q.event(claim, "split", {"train": len(train_idx), "validation": len(val_idx), "seed": params.seed})
        x_train, y_train = x[train_idx], y[train_idx]
        if params.augment and backbone.kind == "image":
            x_aug, y_aug = self._augmented(backbone, [keys[i] for i in train_idx], y_train, params, beat)
            x_train, y_train = np.concatenate([x_train, x_aug]), np.concatenate([y_train, y_aug])
            q.event(claim, "augmentation", {"copies": params.augment, "train": len(y_train)})

        # The head a model gets without training: label names embedded (text), or each
        # class's mean training embedding (images, whose backbone cannot embed names).
        if backbone.kind == "text":
            reference, label_rows = "zero_shot", backbone.embed(labels).vectors
        else:
            reference, label_rows = "prototype", _class_means(x[train_idx], y[train_idx], len(labels))
        zs_config, zs_tensors = zero_shot.build(backbone.id, backbone.fingerprint, labels, label_rows)
        active = self._active(job.tenant, job.adapter, backbone)
        x_val, y_val = x[val_idx], y[val_idx]
        baselines = {
            "majority": evaluate(y_val, np.full(len(y_val), np.bincount(y[train_idx]).argmax()), labels),
            reference: evaluate(y_val, _predict(zs_tensors, "linear", x_val), labels),
        }
        if active is not None:
            index = {label: i for i, label in enumerate(labels)}
            active_pred = active.predict_proba(x_val).argmax(1)
            baselines["active"] = evaluate(
                y_val, np.array([index.get(active.labels[p], -1) for p in active_pred]), labels)
            baselines["active"]["version"] = active.version
        init = None
        if params.continual and active is not None:
            init = continual_init(params.head, labels, active.labels, active.config.head, active.tensors,
                                  zs_tensors["weight"])

        def on_epoch(report: EpochReport) -> bool:
            beat.progress = 0.2 + 0.75 * report.epoch / params.epochs
            q.event(claim, "epoch", {"epoch": report.epoch, "train_loss": round(report.train_loss, 5),
                                     "val_loss": round(report.val_loss, 5), "val_macro_f1": round(report.val_macro_f1, 4)})
            return beat.cancel_requested

        trained = train_head(x_train, y_train, x_val, y_val, labels, params, init=init, on_epoch=on_epoch)
        if trained.stopped_early:
            q.event(claim, "early_stop", {"epoch": trained.epochs_run, "best_epoch": trained.best_epoch,
                                          "patience": params.patience})
        metrics = {**trained.val_metrics, "baselines": {k: _summary(v) for k, v in baselines.items()}}
        q.event(claim, "evaluation", {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
                                      "baselines": metrics["baselines"]})
        promote, reason = self._decide(metrics, baselines.get("active"))
        config = AdapterConfig(
            backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head=params.head,
            labels=labels, metrics=metrics,
            training={"method": "fine-tune", "job_id": job.id, "params": params.as_dict(),
                      "examples": len(keys), "train": len(train_idx), "validation": len(val_idx),
                      "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
                      "continual_from": active.version if init is not None and active else None},
            parent_version=active.version if active else None,
        )
        config, weights = encode(config, trained.tensors)
        version = q.publish(claim, config, weights, promote=promote, metrics=metrics,
                            decision={"decision": "promote" if promote else "candidate", "reason": reason},
                            max_adapters=self.settings.max_adapters_per_tenant)
        log.info("job %s: version %d (%s)", job.id, version, reason)

    def _decide(self, metrics: dict[str, Any], active: dict[str, Any] | None) -> tuple[bool, str]:
        """Negative-transfer guard: beat what serves by the margin, or stay a candidate."""
        new = metrics["macro_f1"]
        if active is None:
            return True, "no active version: the first trained version serves"
        margin = self.settings.promote_margin
        if new >= active["macro_f1"] + margin:
            return True, f"macro-F1 {new:.4f} beats the active version's {active['macro_f1']:.4f} by >= {margin}"
        return False, (f"macro-F1 {new:.4f} does not beat the active version's {active['macro_f1']:.4f} "
                       f"by the margin {margin}: kept as a candidate (promote it explicitly if wanted)")

    def _backbone(self, name: str) -> Backbone:
        if name not in self._backbones:
            s = self.settings
            try:
                self._backbones[name] = load_backbone(name, s.home, precision=s.precision, provider=s.provider,
                                                      intra_op_threads=s.train_threads, image_limits=s.image_limits())
            except Exception as e:
                raise TrainingError("backbone_unavailable", f"backbone {name!r} cannot be loaded: {e}") from e
        return self._backbones[name]

    def _embed(self, backbone: Backbone, keys: list[str], beat: "_Heartbeat") -> np.ndarray:
        """Embeddings from the cache (text or base64 image hash + backbone fingerprint),
        the rest computed."""
        unique = list(dict.fromkeys(keys))
        cached = self.queue.cached_embeddings(backbone.fingerprint, unique)
        missing = [t for t in unique if t not in cached]
        fresh: dict[str, bytes] = {}
        for i in range(0, len(missing), 64):
            chunk = missing[i : i + 64]
            items = [base64.b64decode(k) for k in chunk] if backbone.kind == "image" else chunk
            for text, vec in zip(chunk, backbone.embed(items).vectors):
                fresh[text] = vec.astype(np.float32).tobytes()
            beat.progress = 0.2 * (i + len(chunk)) / max(1, len(missing))
            if beat.cancel_requested:
                raise Cancelled()
        if fresh:
            self.queue.store_embeddings(backbone.fingerprint, fresh)
        vectors = {**cached, **fresh}
        return np.stack([np.frombuffer(vectors[t], dtype=np.float32) for t in keys])

    def _augmented(self, backbone: Backbone, images: list[str], y: np.ndarray, params: TrainParams,
                   beat: "_Heartbeat") -> tuple[np.ndarray, np.ndarray]:
        """`params.augment` random variants of each training image, embedded (never cached:
        they differ per seed). Validation images are never augmented."""
        from models.image import augment

        rng = np.random.default_rng(params.seed)
        vectors = []
        for i in range(0, len(images), 16):
            chunk = [backbone.prepare(base64.b64decode(k)) for k in images[i : i + 16]]
            variants = [augment(p, rng) for p in chunk for _ in range(params.augment)]
            vectors.append(backbone.embed(variants).vectors)
            if beat.cancel_requested:
                raise Cancelled()
        return np.concatenate(vectors), np.repeat(y, params.augment)

    def _active(self, tenant: str, adapter: str, backbone: Backbone) -> Adapter | None:
        try:
            stored, _ = self.registry.active(tenant, adapter)
            return decode(stored.config, stored.weights, fingerprint=backbone.fingerprint, dim=backbone.dim,
                          version=stored.version)
        except NotFoundError:
            return None
        except AdapterFormatError as e:
            log.warning("active version of %s/%s unusable as a baseline: %s", tenant, adapter, e)
            return None


def _predict(tensors: dict[str, np.ndarray], head: str, x: np.ndarray) -> np.ndarray:
    config = AdapterConfig(backbone="", fingerprint="", dim=x.shape[1], head=head,
                           labels=[str(i) for i in range(len(tensors["bias" if head == "linear" else "b2"]))])
    return Adapter(config, tensors).predict_proba(x).argmax(1)


def _class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    means = np.stack([x[y == c].mean(0) for c in range(k)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "version") if k in metrics}


class _Heartbeat(threading.Thread):
    """Renews the job's lease while the worker computes; notices cancellation."""

    def __init__(self, queue: JobQueue, claim: Claimed, every_s: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{claim.job.id[:8]}")
        self.queue, self.claim, self.every_s = queue, claim, every_s
        self.progress = 0.0
        self.cancel_requested = False
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.cancel_requested = self.queue.heartbeat(self.claim, self.progress)
            except LeaseLost:
                self.cancel_requested = True
                return
            except Exception:
                log.warning("heartbeat failed; will retry", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when the service process that started it dies, even by
    kill -9, instead of living on as an orphan (its job's lease then expires and retries)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerPool:
    """Fine-tune worker processes beside the HTTP service, restarted when they die."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen[bytes]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.train_workers <= 0:
            return
        self.procs = [self._spawn() for _ in range(self.settings.train_workers)]
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="train-workers")

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "service.worker"], cwd=Path(__file__).resolve().parents[1],
                                preexec_fn=_die_with_parent)
        log.info("started fine-tune worker pid %d", proc.pid)
        return proc

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    log.warning("fine-tune worker pid %d exited with %s; restarting", proc.pid, proc.returncode)
                    self.procs[i] = self._spawn()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s")
    for name in ("service", "adapters", "models"):
        logging.getLogger(name).setLevel(logging.INFO)
    settings = Settings()
    try:
        os.nice(settings.train_nice)
    except OSError:
        pass
    import torch

    torch.set_num_threads(settings.train_threads)
    if settings.train_metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # A standalone trainer (its own pod) serves its metrics itself; one started by the
        # service writes them into the service's multiprocess directory instead.
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.train_metrics_port)
        except OSError as e:  # another worker on this host has the port: train without it
            log.warning("metrics port %d unavailable (%s); set GRAFT_TRAIN_METRICS_PORT", settings.train_metrics_port, e)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Worker(settings).run_forever(stop)


if __name__ == "__main__":
    main()
