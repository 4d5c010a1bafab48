from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "backbone", "images", "input_type")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    INPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedScalarFieldContainer[str]
    backbone: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    input_type: str
    def __init__(self, inputs: _Optional[_Iterable[str]] = ..., backbone: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., input_type: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("backbone", "dim", "embeddings", "truncated")
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    backbone: str
    dim: int
    embeddings: _containers.RepeatedCompositeFieldContainer[Vector]
    truncated: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, backbone: _Optional[str] = ..., dim: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., truncated: _Optional[_Iterable[int]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("tenant", "adapter", "inputs", "top_k", "images")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Scored(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ItemPrediction(_message.Message):
    __slots__ = ("label", "score", "top", "truncated")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    top: _containers.RepeatedCompositeFieldContainer[Scored]
    truncated: bool
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., top: _Optional[_Iterable[_Union[Scored, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("tenant", "adapter", "version", "backbone", "predictions")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    version: int
    backbone: str
    predictions: _containers.RepeatedCompositeFieldContainer[ItemPrediction]
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., backbone: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[ItemPrediction, _Mapping]]] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("text", "label", "image", "group")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    text: str
    label: str
    image: bytes
    group: str
    def __init__(self, text: _Optional[str] = ..., label: _Optional[str] = ..., image: _Optional[bytes] = ..., group: _Optional[str] = ...) -> None: ...

class FineTuneParams(_message.Message):
    __slots__ = ("head", "hidden", "epochs", "batch_size", "lr", "weight_decay", "dropout", "warmup_fraction", "patience", "val_fraction", "seed", "continual", "augment", "standardize", "keep_examples", "method", "lora_rank", "lora_alpha", "lora_layers", "lora_targets", "layer_decay", "gradual_unfreeze", "unfreeze_layers", "allow_dropped_labels", "time_budget_s")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTINUAL_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    STANDARDIZE_FIELD_NUMBER: _ClassVar[int]
    KEEP_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LORA_TARGETS_FIELD_NUMBER: _ClassVar[int]
    LAYER_DECAY_FIELD_NUMBER: _ClassVar[int]
    GRADUAL_UNFREEZE_FIELD_NUMBER: _ClassVar[int]
    UNFREEZE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_DROPPED_LABELS_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    head: str
    hidden: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    dropout: float
    warmup_fraction: float
    patience: int
    val_fraction: float
    seed: int
    continual: bool
    augment: int
    standardize: bool
    keep_examples: bool
    method: str
    lora_rank: int
    lora_alpha: float
    lora_layers: int
    lora_targets: _containers.RepeatedScalarFieldContainer[str]
    layer_decay: float
    gradual_unfreeze: bool
    unfreeze_layers: int
    allow_dropped_labels: bool
    time_budget_s: float
    def __init__(self, head: _Optional[str] = ..., hidden: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., dropout: _Optional[float] = ..., warmup_fraction: _Optional[float] = ..., patience: _Optional[int] = ..., val_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., continual: _Optional[bool] = ..., augment: _Optional[int] = ..., standardize: _Optional[bool] = ..., keep_examples: _Optional[bool] = ..., method: _Optional[str] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., lora_layers: _Optional[int] = ..., lora_targets: _Optional[_Iterable[str]] = ..., layer_decay: _Optional[float] = ..., gradual_unfreeze: _Optional[bool] = ..., unfreeze_layers: _Optional[int] = ..., allow_dropped_labels: _Optional[bool] = ..., time_budget_s: _Optional[float] = ...) -> None: ...

class FineTuneRequest(_message.Message):
    __slots__ = ("tenant", "adapter", "backbone", "examples", "params")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    backbone: str
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    params: FineTuneParams
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., backbone: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ..., params: _Optional[_Union[FineTuneParams, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "tenant", "adapter", "backbone", "status", "progress", "metrics_json", "version", "promoted", "error_code", "error_message", "attempts", "created_at", "finished_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tenant: str
    adapter: str
    backbone: str
    status: str
    progress: float
    metrics_json: str
    version: int
    promoted: bool
    error_code: str
    error_message: str
    attempts: int
    created_at: str
    finished_at: str
    def __init__(self, job_id: _Optional[str] = ..., tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., backbone: _Optional[str] = ..., status: _Optional[str] = ..., progress: _Optional[float] = ..., metrics_json: _Optional[str] = ..., version: _Optional[int] = ..., promoted: _Optional[bool] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., attempts: _Optional[int] = ..., created_at: _Optional[str] = ..., finished_at: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class AdapterSummary(_message.Message):
    __slots__ = ("adapter", "backbone", "active_version", "versions")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    backbone: str
    active_version: int
    versions: int
    def __init__(self, adapter: _Optional[str] = ..., backbone: _Optional[str] = ..., active_version: _Optional[int] = ..., versions: _Optional[int] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("tenant", "adapters")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterSummary]
    def __init__(self, tenant: _Optional[str] = ..., adapters: _Optional[_Iterable[_Union[AdapterSummary, _Mapping]]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("tenant", "adapter", "version", "allow_dropped_labels")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_DROPPED_LABELS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    version: int
    allow_dropped_labels: bool
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., allow_dropped_labels: _Optional[bool] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("tenant", "adapter", "active_version")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    active_version: int
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., active_version: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("tenant", "adapter")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ...) -> None: ...

class DeleteAdapterRequest(_message.Message):
    __slots__ = ("tenant", "adapter")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ...) -> None: ...

class DeleteTenantRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class DeleteTenantResponse(_message.Message):
    __slots__ = ("tenant", "removed")
    class RemovedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    removed: _containers.ScalarMap[str, int]
    def __init__(self, tenant: _Optional[str] = ..., removed: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DeleteAdapterResponse(_message.Message):
    __slots__ = ("tenant", "adapter", "deleted")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    deleted: bool
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...

class CreateAdapterRequest(_message.Message):
    __slots__ = ("tenant", "adapter", "backbone", "labels", "descriptions")
    class DescriptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    backbone: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    descriptions: _containers.ScalarMap[str, str]
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., backbone: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., descriptions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateAdapterResponse(_message.Message):
    __slots__ = ("tenant", "adapter", "version", "backbone", "labels")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    version: int
    backbone: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., backbone: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("tenant", "adapter")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ...) -> None: ...

class VersionDetail(_message.Message):
    __slots__ = ("version", "active", "created_at", "backbone", "head", "labels", "metrics_json", "training_json", "parent_version", "method", "lora_json", "bytes", "unfreeze_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JSON_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LORA_JSON_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    UNFREEZE_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    active: bool
    created_at: str
    backbone: str
    head: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    metrics_json: str
    training_json: str
    parent_version: int
    method: str
    lora_json: str
    bytes: int
    unfreeze_json: str
    def __init__(self, version: _Optional[int] = ..., active: _Optional[bool] = ..., created_at: _Optional[str] = ..., backbone: _Optional[str] = ..., head: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., metrics_json: _Optional[str] = ..., training_json: _Optional[str] = ..., parent_version: _Optional[int] = ..., method: _Optional[str] = ..., lora_json: _Optional[str] = ..., bytes: _Optional[int] = ..., unfreeze_json: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("tenant", "adapter", "versions")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionDetail]
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionDetail, _Mapping]]] = ...) -> None: ...

class GetJobEventsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("n", "at", "kind", "data_json")
    N_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    n: int
    at: str
    kind: str
    data_json: str
    def __init__(self, n: _Optional[int] = ..., at: _Optional[str] = ..., kind: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class GetJobEventsResponse(_message.Message):
    __slots__ = ("job_id", "events")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    def __init__(self, job_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("tenant", "jobs")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, tenant: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant", "api_key")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    api_key: str
    def __init__(self, tenant: _Optional[str] = ..., api_key: _Optional[str] = ...) -> None: ...

class IssueKeyRequest(_message.Message):
    __slots__ = ("tenant", "expires_in_s")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    expires_in_s: float
    def __init__(self, tenant: _Optional[str] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class IssueKeyResponse(_message.Message):
    __slots__ = ("tenant", "key_id", "api_key", "expires_at")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    key_id: str
    api_key: str
    expires_at: str
    def __init__(self, tenant: _Optional[str] = ..., key_id: _Optional[str] = ..., api_key: _Optional[str] = ..., expires_at: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class KeyDetail(_message.Message):
    __slots__ = ("key_id", "created_at", "revoked", "expires_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    created_at: str
    revoked: bool
    expires_at: str
    def __init__(self, key_id: _Optional[str] = ..., created_at: _Optional[str] = ..., revoked: _Optional[bool] = ..., expires_at: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("tenant", "keys")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    keys: _containers.RepeatedCompositeFieldContainer[KeyDetail]
    def __init__(self, tenant: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[KeyDetail, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("tenant", "key_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    key_id: str
    def __init__(self, tenant: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class GetVersionCardRequest(_message.Message):
    __slots__ = ("tenant", "adapter", "version", "format")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    adapter: str
    version: int
    format: str
    def __init__(self, tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class VersionCard(_message.Message):
    __slots__ = ("card_json", "markdown")
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    card_json: str
    markdown: str
    def __init__(self, card_json: _Optional[str] = ..., markdown: _Optional[str] = ...) -> None: ...

class VersionCardImage(_message.Message):
    __slots__ = ("png",)
    PNG_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    def __init__(self, png: _Optional[bytes] = ...) -> None: ...
