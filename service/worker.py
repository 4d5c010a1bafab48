"""Fine-tune workers: processes that claim jobs from the registry and run the pipeline
(adapters/pipeline.py) on each: a thin loop of claim, train, publish, finish.

`python -m service.worker` runs one (the Kubernetes trainer Deployment runs only these);
the HTTP service starts GRAFT_TRAIN_WORKERS of them beside itself and restarts any that
die. Workers run at lower CPU priority with one thread each, so serving keeps its cores.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time

from adapters.format import Adapter, AdapterFormatError, decode
from adapters.jobs import Claimed, JobQueue, LeaseLost, worker_id
from adapters.lease import LeaseKeeper
from adapters.pipeline import InvalidExample, InvalidParams, train_version
from adapters.registry import AdapterDeleted, NotFoundError, Registry, default_url
from adapters.training import Cancelled
from models import Backbone, load_backbone
from models.catalog import configured_name
from service import metrics
from service.auth import load_signing_key
from service.settings import Settings
from service.worker_pool import prepare_worker_process

log = logging.getLogger("service.worker")  # not __name__: it is __main__ under -m
SWEEP_EVERY_S = 600.0  # how often a worker applies the retention settings


class TrainingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.database_url or default_url(settings.home),
                                 signing_key=load_signing_key(settings))
        self.queue = JobQueue(self.registry, lease_s=settings.job_lease_s, max_attempts=settings.job_max_attempts)
        self.id = worker_id()
        self._backbones: dict[str, Backbone] = {}

    def run_forever(self, stop: threading.Event) -> None:
        log.info("fine-tune worker %s polling for jobs", self.id)
        swept = -math.inf
        while not stop.is_set():
            if time.monotonic() - swept > SWEEP_EVERY_S:
                swept = time.monotonic()
                self.sweep()
            try:
                claim = self.queue.claim(self.id)
            except Exception:
                log.warning("could not claim a job; retrying", exc_info=True)
                claim = None
            if claim is None:
                stop.wait(self.settings.job_poll_ms / 1000)
                continue
            try:
                self.run(claim)
            except Exception:  # the registry went away mid-finish: the lease expires, the job retries
                log.exception("job %s: could not be finished; its lease will expire and it will be retried",
                              claim.job.id)

    def sweep(self) -> None:
        """Retention: old cached vectors and kept examples past their time are deleted."""
        try:
            self.queue.sweep(embeddings_days=self.settings.embedding_cache_days,
                             kept_examples_days=self.settings.kept_examples_days)
        except Exception:
            log.warning("retention sweep failed; retrying later", exc_info=True)

    def run(self, claim: Claimed) -> None:
        log.info("job %s: training %s/%s", claim.job.id, claim.job.tenant, claim.job.adapter)
        beat = LeaseKeeper(self.queue, claim, self.settings.job_lease_s / 3)
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
        except Exception:  # a bug must fail the job, not the worker
            status = "failed"
            log.exception("job %s failed", claim.job.id)  # the detail stays in the worker's log
            self._finish(claim, status, "internal",
                         f"an internal error stopped the job; operators find it in the worker log under job {claim.job.id}")
        finally:
            beat.stop()
            metrics.finetune_job_seconds.labels(status).observe(time.perf_counter() - started)

    def _finish(self, claim: Claimed, status: str, code: str | None = None, message: str | None = None) -> None:
        try:
            self.queue.finish(claim, status, error_code=code, error_message=message)
        except LeaseLost:
            log.warning("job %s: lease lost before it could be marked %s", claim.job.id, status)
        except Exception:  # the registry is away: the lease expires and the job is retried
            log.warning("job %s: could not be marked %s (registry unreachable?); it will be retried",
                        claim.job.id, status, exc_info=True)

    # -- the work: one pipeline call, then publish --------------------------------------

    def _train(self, claim: Claimed, beat: LeaseKeeper) -> None:
        job = claim.job
        backbone = self._backbone(job.backbone)
        try:
            outcome = train_version(
                claim.examples, backbone, job.params, active=self._active(job.tenant, job.adapter, backbone),
                cache=self.queue.embedding_cache(job.tenant), report=beat,
                promote_margin=self.settings.promote_margin, job_id=job.id,
                max_unfreeze_bytes=self.settings.max_unfreeze_bytes,
            )
        except InvalidExample as e:
            raise TrainingError("invalid_example", str(e)) from e
        except InvalidParams as e:
            raise TrainingError("invalid_params", str(e)) from e
        try:
            version = self.queue.publish(
                claim, outcome.config, outcome.weights, promote=outcome.promote, metrics=outcome.metrics,
                decision={"decision": "promote" if outcome.promote else "candidate", "reason": outcome.reason},
                expected_active=outcome.baseline_version, max_adapters=self.settings.max_adapters_per_tenant,
            )
        except AdapterDeleted as e:
            raise TrainingError("adapter_deleted", str(e)) from e
        log.info("job %s: version %d (%s)", job.id, version, outcome.reason)

    def _backbone(self, backbone_id: str) -> Backbone:
        """The job's backbone, by its id, resolved through this trainer's GRAFT_BACKBONES as the
        server resolves it (a local directory's id is its base name, not a path)."""
        if backbone_id not in self._backbones:
            s = self.settings
            name = configured_name(backbone_id, s.backbones)
            if name is None:
                raise TrainingError("backbone_unavailable",
                                    f"backbone {backbone_id!r} is not in the trainer's GRAFT_BACKBONES")
            try:
                self._backbones[backbone_id] = load_backbone(
                    name, s.artifacts_home, prepared=s.prepared_only(), precision=s.precision, provider=s.provider,
                    intra_op_threads=s.train_threads, image_limits=s.image_limits(), split_layers=s.split_layers,
                    image_split_blocks=s.image_split_blocks)
            except Exception as e:
                log.exception("backbone %s cannot be loaded", name)
                raise TrainingError("backbone_unavailable",
                                    f"backbone {backbone_id!r} cannot be loaded on the trainer; see its log") from e
        return self._backbones[backbone_id]

    def _active(self, tenant: str, adapter: str, backbone: Backbone) -> Adapter | None:
        try:
            stored, _ = self.registry.active(tenant, adapter)
            if stored.authentic is False:  # as the serving cache does: never train on a forged head
                raise AdapterFormatError("its signature does not verify")
            shape = backbone.split_shape
            return decode(stored.config, stored.weights, fingerprint=backbone.fingerprint, dim=backbone.dim,
                          split=shape.split if shape else None,
                          version=stored.version)
        except NotFoundError:
            return None
        except AdapterFormatError as e:
            log.warning("active version of %s/%s unusable as a baseline: %s", tenant, adapter, e)
            return None


def main() -> None:
    settings = Settings()
    prepare_worker_process(settings)  # logging, CPU priority, threads, metrics
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Worker(settings).run_forever(stop)


if __name__ == "__main__":
    main()
