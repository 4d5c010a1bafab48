"""Request and response bodies of the HTTP contract (pydantic at the edge)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageItem(_Strict):
    image: str = Field(description="a PNG or JPEG image, base64 (a data: URL is accepted)")


def _item_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, (dict, ImageItem)):
        return "image"
    return None


Item = Annotated[
    Annotated[str, Tag("text")] | Annotated[ImageItem, Tag("image")],
    Discriminator(_item_kind, custom_error_type="invalid_item",
                  custom_error_message='expected a string (text) or an object {"image": "<base64>"}'),
]


class EmbedRequest(_Strict):
    inputs: list[Item] = Field(
        description='texts (text backbones) or {"image": base64} objects (image backbones); '
                    "at most GRAFT_MAX_BATCH_ITEMS"
    )
    backbone: str | None = Field(None, description="backbone id; default GRAFT_DEFAULT_BACKBONE")
    input_type: Literal["query", "passage"] = Field(
        "query", description="text backbones: query (the catalogue's query prompt before each text, if any) or "
                             "passage (its passage prompt instead: documents to be searched, E5/BGE-style models)")


class EmbedResponse(BaseModel):
    backbone: str
    dim: int
    embeddings: list[list[float]]
    truncated: list[int] = Field(
        description="indices of inputs cut to the backbone's token limit before embedding"
    )


class PredictRequest(_Strict):
    tenant: Name
    adapter: Name = "default"
    inputs: list[Item] = Field(description='texts or {"image": base64} objects, as the adapter\'s backbone takes')
    top_k: int = Field(1, ge=1, le=100, description="how many labels to rank per item")


class Scored(BaseModel):
    label: str
    score: float


class ItemPrediction(Scored):
    top: list[Scored]
    truncated: bool


class PredictResponse(BaseModel):
    tenant: str
    adapter: str
    version: int
    backbone: str
    predictions: list[ItemPrediction]


class TenantRequest(_Strict):
    tenant: Name


class AdapterRef(_Strict):
    """A tenant's adapter as HTTP paths name it (/v1/tenants/{tenant}/adapters/{adapter}):
    gRPC checks the same two fields of its messages with the same rule."""

    tenant: Name
    adapter: Name


KEY_ID_PATTERN = r"^[0-9a-f]{1,16}$"


class KeyRef(_Strict):
    """A tenant's key as HTTP paths name it (/v1/tenants/{tenant}/keys/{key_id}), for gRPC."""

    tenant: Name
    key_id: Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]


class TenantCreated(BaseModel):
    tenant: str
    api_key: str = Field(description="the tenant's first key; shown once, stored hashed")


class TenantDeleted(BaseModel):
    tenant: str
    removed: dict[str, int] = Field(
        description="how many of each were erased: keys, adapters, versions, jobs, job_examples, job_events, "
                    "cached_vectors, cached_hidden_states")


class IssueKeyRequest(_Strict):
    expires_in_s: float | None = Field(
        None, gt=0, le=10 * 365 * 86400, description="the key stops working this many seconds after issue; "
                                                     "omitted: valid until revoked")


class KeyCreated(BaseModel):
    tenant: str
    key_id: str
    api_key: str
    expires_at: str | None = None


class KeyDetail(BaseModel):
    key_id: str
    created_at: str
    revoked: bool
    expires_at: str | None = None


class KeyList(BaseModel):
    tenant: str
    keys: list[KeyDetail]


class CreateAdapterRequest(_Strict):
    tenant: Name
    adapter: Name = "default"
    backbone: str | None = None
    labels: list[str] = Field(description="class names, unique, at least 2")
    descriptions: dict[str, str] | None = Field(
        None, description="optional text per label, embedded instead of the bare name"
    )


class AdapterSummary(BaseModel):
    adapter: str
    backbone: str
    active_version: int | None
    versions: int


class AdapterList(BaseModel):
    tenant: str
    adapters: list[AdapterSummary]


class CreatedAdapter(BaseModel):
    tenant: str
    adapter: str
    version: int
    backbone: str
    labels: list[str]


class VersionDetail(BaseModel):
    version: int
    active: bool
    created_at: str
    backbone: str
    head: str
    method: str = Field(description="head, lora (factors of the top layers too), unfreeze (the top layers' weights "
                                    "too), lexical (TF-IDF n-grams, no vector) or hybrid (n-grams and the vector)")
    lora: dict[str, object] | None = Field(description="lora: rank, alpha, layers, split, targets")
    unfreeze: dict[str, object] | None = Field(
        None, description="unfreeze: layers, split, backbone_layers, hidden, intermediate (image backbones: arch "
                          "instead of intermediate; layers and split count blocks)")
    lexical: dict[str, object] | None = Field(
        None, description="lexical, hybrid: word_ngram, char_ngram, word_terms, char_terms, embedding_weight (hybrid)")
    bytes: int = Field(description="size of the version's weights")
    labels: list[str]
    metrics: dict[str, object]
    training: dict[str, object]
    parent_version: int | None


class VersionList(BaseModel):
    tenant: str
    adapter: str
    versions: list[VersionDetail]


class PromoteRequest(_Strict):
    version: int = Field(ge=1)
    allow_dropped_labels: bool = Field(
        False, description="promote even if the version drops labels the active version serves (their requests "
                           "would get another label); without it such a promote answers 409 naming them")


class ActiveVersion(BaseModel):
    tenant: str
    adapter: str
    active_version: int


class Deleted(BaseModel):
    tenant: str
    adapter: str
    deleted: bool


class FinetuneParams(_Strict):
    """Optional hyperparameters; the defaults work with examples alone."""

    head: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(256, ge=8, le=4096, description="hidden units of the mlp head")
    method: Literal["auto", "head", "lora", "unfreeze", "lexical", "hybrid", "setfit"] = Field(
        "auto", description="auto (default): the service trains the candidates that fit the data and "
                            "time_budget_s (head linear and mlp, zero-shot from the label names, lexical, hybrid, lora "
                            "when the backbone is split and "
                            "the set large enough, setfit when split and a class has at most 32 examples; "
                            "images: head, head on augmented copies, unfreeze), keeps the best on "
                            "a validation split and evaluates it once on a test split (adapters/auto.py); "
                            "head: a head on the frozen backbone's vectors; lexical: TF-IDF word and character "
                            "n-grams and a linear model trained from scratch on the texts (where words themselves "
                            "decide the label; text backbones); hybrid: those n-grams and the backbone's vector, one "
                            "linear model on both (text backbones); lora: LoRA factors of the top layers "
                            "and a head, trained together; unfreeze: every weight of the top layers and a head "
                            "(MBs per adapter: for tenants with much data); setfit: few-shot, SetFit's recipe on a "
                            "LoRA adapter (the factors trained contrastively on pairs of the examples, same label "
                            "or not, then a logistic-regression head; served as a lora version; 3 examples a label "
                            "at least). lora, setfit and unfreeze need a text backbone "
                            "split for deep adapters (see /readyz); image backbones take unfreeze (their last blocks "
                            "and head conv, served in fp32) but not lora")
    lora_rank: int = Field(8, ge=1, le=64, description="lora: rank of the factors")
    lora_alpha: float | None = Field(None, gt=0, le=1024, description="lora: scale numerator (default 2 x rank)")
    lora_layers: int | None = Field(
        None, ge=1, le=64, description="lora: top layers adapted (default: all the backbone's split offers)")
    unfreeze_layers: int | None = Field(
        None, ge=1, le=64, description="unfreeze: top layers trained (default: all the backbone's split offers; "
                                       "their weights at most GRAFT_MAX_UNFREEZE_BYTES). Image backbones count "
                                       "blocks: MBConv blocks (expand conv, depthwise conv, project conv, batch "
                                       "norms; EfficientNet-Lite0 has 16), the last k trained with the head conv "
                                       "(1x1 to 1280 channels); batch-norm statistics stay pretrained")
    lora_targets: list[Literal["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]] | None = Field(
        None, min_length=1, description="lora: projections adapted (default: all six)")
    layer_decay: float = Field(
        0.8, gt=0, le=1, description="lora, unfreeze: discriminative learning rates, each lower layer learns this "
                                     "much slower")
    gradual_unfreeze: bool = Field(
        False, description="lora, unfreeze: gradual unfreezing, the top layer trains first, one layer more each epoch")
    epochs: int | None = Field(None, ge=1, le=1000, description="default: 100 (head), 4 (lora, unfreeze), 8 (unfreeze "
                                                               "on an image backbone)")
    batch_size: int | None = Field(None, ge=1, le=4096, description="default: 32 (head), 16 (lora, unfreeze)")
    lr: float | None = Field(None, gt=0, le=1, description="default: 1e-2 (head); lora: 2e-3 for the top layer's "
                                                           "factors; unfreeze: 1e-4 for the top layer's weights "
                                                           "(image backbones: 1e-3 for the head conv's)")
    weight_decay: float = Field(1e-2, ge=0, le=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    warmup_fraction: float = Field(0.1, ge=0, le=0.5)
    patience: int | None = Field(
        None, ge=1, le=1000, description="epochs without a better validation macro-F1 (default: 15 head, 3 lora and "
                                         "unfreeze, 8 unfreeze on an image backbone)")
    val_fraction: float = Field(0.2, gt=0, lt=0.9)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    continual: bool = Field(False, description="start from the active version's head (labels may grow)")
    standardize: bool | None = Field(
        None,
        description="train on per-dimension standardised features (folded into the head's weights); "
                    "default: on for image backbones, off for text (docs/BENCHMARKS.md)",
    )
    keep_examples: bool = Field(
        False, description="keep the examples after the job ends (for later continual training; deleted after "
                           "GRAFT_KEPT_EXAMPLES_DAYS or with the tenant); default: deleted when the job ends")
    time_budget_s: float = Field(
        120.0, ge=1, le=3600, description="method auto: seconds the job may spend; a candidate whose estimated time "
                                          "would pass it is skipped (the first always trains)")
    allow_dropped_labels: bool = Field(
        False, description="promote automatically even if the new version drops labels the active version serves; "
                           "without it such a version is stored as a candidate and the job's promotion event says why")
    augment: int = Field(
        0, ge=0, le=8,
        description="image backbones: randomly flipped, rotated (up to 10 degrees) and colour-jittered "
                    "copies of each training image; 0 = off (each copy is one more embedding per image; method "
                    "unfreeze: one more lower-graph feature map per image, made once per job and not cached, "
                    "so every epoch sees the same copies)",
    )


class FinetuneRequest(_Strict):
    tenant: Name
    adapter: Name = "default"
    backbone: str | None = None
    examples: list[Any] = Field(
        description='[{"text": ..., "label": ...}, ...], or [{"image": base64, "label": ...}, ...] for an image '
                    'backbone; each may carry an optional "group" (a string): the model card reports macro-F1 per group'
    )
    params: FinetuneParams | None = None


class JobError(BaseModel):
    code: str
    message: str | None


class JobStatus(BaseModel):
    job_id: str
    tenant: str
    adapter: str
    backbone: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    metrics: dict[str, Any] | None
    version: int | None
    promoted: bool
    error: JobError | None
    attempts: int
    created_at: str
    finished_at: str | None


class JobList(BaseModel):
    tenant: str
    jobs: list[JobStatus]


class JobEvents(BaseModel):
    job_id: str
    events: list[dict[str, Any]]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: object | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
