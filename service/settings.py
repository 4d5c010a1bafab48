"""Every knob of the service, read from the environment with the prefix GRAFT_."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.image import ImageLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAFT_", extra="ignore")

    home: Path = Field(Path(".graft"), description="cache of ONNX artifacts and local state")
    artifacts: Path | None = Field(
        None, description="where backbone artifacts (ONNX graphs, parity and int8 verdicts) are read and built; "
                          "default GRAFT_HOME. With GRAFT_PREPARED=required: what `python -m service.cli prepare` "
                          "built, e.g. a volume mounted read-only")
    prepared: Literal["build", "required"] = Field(
        "build", description="build: artifacts missing at start are exported then (needs the export extra: torch, "
                             "transformers); required: only prepared artifacts are loaded (no torch or transformers "
                             "imported) and a server without them refuses to start, naming what is missing and the "
                             "command that builds it")
    backbones: list[str] = Field(
        ["minilm-l6", "efficientnet-lite0"], description="backbones loaded at start (JSON list)"
    )
    default_backbone: str = "minilm-l6"
    catalog: Path | None = Field(
        None, description="a catalogue file (YAML) of your own backbones, read beside the built-in one "
                          "(models/catalog.yaml); models/catalog.py reads this variable itself")
    precision: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto", description="auto: int8 on CPU, fp16 on CUDA"
    )
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(0, ge=0, description="ORT threads per session; 0 = all cores")
    ort_lanes: int = Field(
        0, ge=0, le=64, description="CPU: a text pass of several ORT calls (int8 runs row by row) runs them in this "
                                    "many single-threaded sessions side by side; 0 = auto (one per core, at most 4; "
                                    "none with GRAFT_INTRA_OP_THREADS=1), 1 = none")
    split_layers: int = Field(
        2, ge=0, le=64, description="top layers of each text backbone that deep (LoRA, unfreeze) adapters train, "
                                    "served from split lower/upper graphs; 0 = head adapters only")
    image_split_blocks: int = Field(
        2, ge=0, le=16, description="last blocks of each image backbone (EfficientNet-Lite0: 16 MBConv blocks) that "
                                    "unfreeze adapters may train, served from split lower/upper graphs (fp32); "
                                    "0 = head adapters only")
    max_loras_per_batch: int = Field(
        32, ge=1, description="distinct LoRA adapters in one upper-graph call (as vLLM's max_loras)")
    max_unfreeze_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="largest unfreeze adapter (its layers' fp32 weights) a fine-tune may "
                                            "train; more layers are refused (400)")

    host: str = "127.0.0.1"
    port: int = 3000
    grpc_port: int = Field(50051, ge=0, description="gRPC port; 0 turns gRPC off")
    grpc_max_message_mb: float = Field(16.0, gt=0)
    workers: int = Field(1, ge=1, description="HTTP worker processes, each with its own backbones")

    database_url: str | None = Field(
        None, description="registry database; default sqlite under GRAFT_HOME, postgresql://… for replicas"
    )
    cache_max_mb: int = Field(256, ge=1, description="resident adapter weights per process (LRU beyond)")
    registry_poll_ms: int = Field(500, ge=50, description="how often replicas look for registry changes")

    train_workers: int = Field(1, ge=0, description="fine-tune worker processes started beside the service")
    train_threads: int = Field(1, ge=1, description="CPU threads per fine-tune worker")
    train_metrics_port: int = Field(9100, ge=0, description="/metrics of a standalone trainer; 0 = off")
    train_nice: int = Field(10, ge=0, le=19, description="CPU priority offset of fine-tune workers")
    max_train_examples: int = Field(50_000, ge=2)
    max_lora_examples: int = Field(
        10_000, ge=2, description="examples per LoRA or unfreeze job (its hidden states are held in memory while it "
                                  "trains)")
    max_queued_jobs: int = Field(100, ge=1, description="beyond this, POST /v1/finetune answers 429")
    max_upload_mb: float = Field(20.0, gt=0, description="request body limit of POST /v1/finetune")
    job_lease_s: float = Field(30.0, gt=0, description="a worker silent this long loses its job")
    job_max_attempts: int = Field(2, ge=1)
    job_poll_ms: int = Field(500, ge=10)
    embedding_cache_days: float = Field(
        30.0, ge=0, description="cached training vectors (and deep adapters' hidden states) are deleted this "
                                "long after they were computed; 0 = never")
    kept_examples_days: float = Field(
        90.0, ge=0, description="examples a tenant kept (params.keep_examples) are deleted this long after "
                                "their job ended; 0 = never (without keep_examples: deleted when the job ends)")
    promote_margin: float = Field(0.01, ge=0, description="macro-F1 a new version must gain to be promoted")

    admin_key: str | None = Field(None, description="admin key; unset: generated into GRAFT_HOME/admin.key")
    signing_key: str | None = Field(
        None, description="HMAC key that signs adapter versions (shared by every replica and trainer); "
                          "unset: generated into GRAFT_HOME/signing.key")
    key_cache_s: float = Field(5.0, ge=0, description="how long a verified tenant key is trusted without a lookup")
    key_outage_grace_s: float = Field(
        300.0, ge=0, description="while the registry is unreachable, how long a key verified before stays good")
    auth_max_failures: int = Field(
        20, ge=0, description="failed authentications per client address per minute before 429; 0 = off")
    rate_limit_rps: float = Field(
        500.0, ge=0, description="inference items/s per tenant (a request of n items costs n); 0 = off")
    rate_limit_burst: float = Field(1000.0, ge=1, description="items a tenant may send at once")
    redis_url: str | None = Field(
        None, description="redis://… : rate limits shared by every worker and replica; unset: per worker process")
    max_body_mb: float = Field(4.0, gt=0, description="request body limit (fine-tune uploads: GRAFT_MAX_UPLOAD_MB)")
    max_tenant_jobs: int = Field(4, ge=1, description="queued plus running fine-tune jobs per tenant")
    max_adapters_per_tenant: int = Field(100, ge=1)

    max_batch_items: int = Field(256, ge=1, description="items allowed in one request")
    max_text_chars: int = Field(20_000, ge=1)
    max_image_mb: float = Field(4.0, gt=0, description="encoded size of one image (PNG or JPEG)")
    max_image_pixels: int = Field(
        2048 * 2048, ge=1, description="pixels one image decodes to, checked from its header: a large JPEG decodes at "
                                       "1/2-1/8 scale (a 12-MP photo passes), a PNG at full size")
    decode_threads: int = Field(2, ge=1, description="images decoded at once per API process (their own pool)")
    batch_max_size: int = Field(64, ge=1, description="items in one backbone pass")
    max_batch_tokens: int = Field(
        8192, ge=1, description="tokens in one text backbone pass (as text-embeddings-inference's max_batch_tokens): "
                                "a pass of long texts holds fewer of them; a longer request is cut into several passes")
    inline_max_tokens: int = Field(
        64, ge=0, description="CPU: a pass of one text of at most this many tokens, while no other pass runs, runs "
                               "on the event loop instead of the compute thread (no thread hops for a lone text); "
                               "0: never (docs/BENCHMARKS.md, the latency path)")
    batch_max_wait_ms: float = Field(
        0.0, ge=0, description="how long a lone request waits for company; 0: never (batches still form from the "
                               "requests that queue while a pass runs; docs/BENCHMARKS.md)")
    max_queued_items: int = Field(
        4096, ge=1, description="items waiting for one backbone beyond which requests get 503 with Retry-After"
    )

    @model_validator(mode="after")
    def _distinct_backbones(self) -> "Settings":
        """Two configured names that would serve under one id (two directories of the same
        base name) are refused at start, not left to overwrite each other."""
        from models.catalog import check_unique_ids

        check_unique_ids(self.backbones)
        return self

    @property
    def artifacts_home(self) -> Path:
        """Where backbone artifacts are: GRAFT_ARTIFACTS, else GRAFT_HOME."""
        return self.artifacts or self.home

    def prepared_only(self) -> Path | None:
        """load_backbone's `prepared`: GRAFT_HOME (writable: this CPU's int8 verdicts when
        `prepare` ran on another kind) with GRAFT_PREPARED=required, else None (build)."""
        return self.home if self.prepared == "required" else None

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=int(self.max_image_mb * 1024 * 1024), max_pixels=self.max_image_pixels)


@lru_cache
def get_settings() -> Settings:
    return Settings()
