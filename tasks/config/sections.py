"""Config of the stages after the world, one model per ``params.yaml`` section, in loop order."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from tasks.config.base import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Section
from tasks.config.cost import CostParams
from tasks.config.license import LicenseParams

# Ultralytics train() arguments visionloop sets from its own keys: extra_args may not set them a second way
YOLO_OWNED_ARGS = {
    "data": "the train stage's dataset view",
    "model": "train.model / train.weights",
    "pretrained": "train.weights (a warm start keeps the checkpoint's weights)",
    "epochs": "train.epochs",
    "batch": "train.batch",
    "patience": "train.patience",
    "imgsz": "base.imgsz",
    "device": "base.device",
    "seed": "base.seed",
    "optimizer": "train.yolo.optimizer",
    "lr0": "train.yolo.lr0",
    "workers": "train.yolo.workers",
    "val": "train.yolo.val_every",
    "save": "train.yolo.val_every (checkpoints after the validated epochs)",
    "cache": "train.yolo.cache_ram",
    "project": "base.paths.models",
    "name": "base.paths.models",
}
# what compress.fine_tune_args may not set: the fine-tune chooses its own optimizer and lr0, the rest is owned
YOLO_FINE_TUNE_OWNED = {
    **{k: v for k, v in YOLO_OWNED_ARGS.items() if k not in {"optimizer", "lr0"}},
    "epochs": "compress.epochs",
    "patience": "compress.epochs (no early stop in a fine-tune)",
}
YoloOptimizer = Literal["auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop"]


class YoloParams(Section):
    """Settings only the YOLO family (Ultralytics, ``tasks/models/yolo.py``) reads: ``train.yolo``."""

    # YOLO26 has two heads: one-to-one (NMS-free, top-k inside the network) and one-to-many (class-aware NMS on
    # the host). One choice for every .pt evaluation and every export, so PyTorch and its artifacts agree.
    nms_free: bool = False
    # "auto": Ultralytics picks the optimizer *and* the learning rate (AdamW at 0.002 * 5 / (4 + classes) below
    # 10k iterations, else MuSGD at 0.01) and ignores lr0; a named optimizer trains at lr0
    optimizer: YoloOptimizer = "auto"
    lr0: float | None = Field(default=None, gt=0)  # None with a named optimizer: Ultralytics' default, 0.01
    # dataloader worker processes per CUDA device; on cpu/mps Ultralytics always loads in the main process
    workers: int = Field(default=0, ge=0)
    # the val-set pass after every val_every-th epoch and always after the last one; best.pt is the best validated
    # epoch (benchmarks/cycle.py: a pass costs ~6 % of an epoch at 160 px, 1 = Ultralytics' every epoch)
    val_every: int = Field(default=5, ge=1)
    # decoded images kept in RAM for all epochs (~77 KB each at 160 px) instead of a PNG decode per image per epoch
    cache_ram: bool = True
    extra_args: dict[str, Any] = Field(default_factory=dict)  # more Ultralytics train() arguments

    @model_validator(mode="after")
    def _every_key_takes_effect(self) -> YoloParams:
        if self.optimizer == "auto" and self.lr0 is not None:
            raise ValueError(
                f"lr0 = {self.lr0} would be ignored: with optimizer 'auto' Ultralytics picks its own learning rate; "
                "name an optimizer (SGD, AdamW, ...) to train at lr0, or remove lr0"
            )
        owned = [f"{key} (use {YOLO_OWNED_ARGS[key]})" for key in self.extra_args if key in YOLO_OWNED_ARGS]
        if owned:
            raise ValueError(f"extra_args sets what another key owns: {', '.join(owned)}")
        return self

    def refused_fine_tune_args(self, args: dict[str, Any]) -> str | None:
        """Why ``compress.fine_tune_args`` cannot go to Ultralytics as they are, or ``None``: the fine-tune may
        name its own ``optimizer`` and ``lr0``, nothing else another key owns; ``lr0`` needs a named optimizer."""
        owned = [f"{key} (set by {YOLO_FINE_TUNE_OWNED[key]})" for key in args if key in YOLO_FINE_TUNE_OWNED]
        if owned:
            return f"compress.fine_tune_args sets what the stage owns: {', '.join(owned)}"
        optimizer = args.get("optimizer", self.optimizer)
        if optimizer == "auto" and "lr0" in args:
            return (
                f"compress.fine_tune_args: lr0 = {args['lr0']} would be ignored with optimizer 'auto' (Ultralytics "
                "picks its own learning rate); name an optimizer there (AdamW, SGD, ...) or remove lr0"
            )
        return None

    def ignored_on(self, device: str) -> str | None:
        """Why a setting would do nothing on ``device`` (``base.device``), or ``None`` when all take effect."""
        if self.workers and device.split(":")[0] in {"cpu", "mps"}:
            return (
                f"train.yolo.workers = {self.workers} does nothing on base.device {device!r}: Ultralytics loads "
                "training data in the main process on cpu/mps; set train.yolo.workers: 0"
            )
        return None


# RF-DETR sizes (tasks/models/rfdetr.py, which holds the per-size table): the ones whose constructor builds without
# a download, and the ones that need the Hugging Face hub (or rfdetr_plus and its PML-1.0 license) and are refused
RFDETR_OFFLINE_SIZES = ("nano", "small", "medium", "large")
RFDETR_HUB_SIZES = ("base", "xlarge", "2xlarge")
RfdetrSize = Literal["nano", "small", "medium", "large"]
# RF-DETR train() arguments visionloop sets from its own keys: extra_args may not set them a second way
RFDETR_OWNED_ARGS = {
    "dataset_dir": "the train stage's dataset view",
    "output_dir": "base.paths.models",
    "pretrain_weights": "train.weights (a warm start)",
    "epochs": "train.epochs",
    "batch_size": "train.batch",
    "resolution": "base.imgsz",
    "device": "base.device",
    "seed": "base.seed",
    "lr": "train.rfdetr.lr",
    "lr_encoder": "train.rfdetr.lr_encoder",
    "num_workers": "train.rfdetr.workers",
    "progress_bar": "train.rfdetr.progress_bar",
    "class_names": "base.classes",
    "num_classes": "base.classes",
    "tensorboard": "off: the train stage logs to MLflow",
    "wandb": "off: the train stage logs to MLflow",
    "mlflow": "off: the train stage logs to MLflow",
    "early_stopping": "train.patience",
    "early_stopping_patience": "train.patience",
    "resume": "train.weights",
}


class RfdetrParams(Section):
    """Settings only the RF-DETR family (Roboflow's ``rfdetr``, ``tasks/models/rfdetr.py``) reads: ``train.rfdetr``."""

    # the architecture; train.model must then read "rfdetr-<size>" (what the lineage records name)
    size: RfdetrSize = "nano"
    lr: float | None = Field(default=None, gt=0)  # None: rfdetr's default, 1e-4
    lr_encoder: float | None = Field(default=None, gt=0)  # None: rfdetr's default, 1.5e-4 (the DINOv2 backbone)
    workers: int = Field(default=0, ge=0)  # dataloader worker processes (rfdetr's num_workers)
    progress_bar: Literal["tqdm", "rich"] | None = None  # rfdetr's own bar; a log line per epoch is always written
    extra_args: dict[str, Any] = Field(default_factory=dict)  # more rfdetr train() arguments

    @field_validator("size", mode="before")
    @classmethod
    def _builds_offline(cls, value: Any) -> Any:
        if value not in RFDETR_OFFLINE_SIZES:
            why = (
                "needs a download from the Hugging Face hub (XL/2XL also the rfdetr_plus package, PML-1.0 license)"
                if value in RFDETR_HUB_SIZES
                else "is not an RF-DETR detection size"
            )
            raise ValueError(f"size {value!r} {why}; sizes that build offline: {', '.join(RFDETR_OFFLINE_SIZES)}")
        return value

    @model_validator(mode="after")
    def _every_key_takes_effect(self) -> RfdetrParams:
        owned = [f"{key} (use {RFDETR_OWNED_ARGS[key]})" for key in self.extra_args if key in RFDETR_OWNED_ARGS]
        if owned:
            raise ValueError(f"extra_args sets what another key owns: {', '.join(owned)}")
        return self


Sha256 = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[0-9a-fA-F]{64}$")]
"""A file's SHA-256: 64 hex digits (upper case accepted, kept lower case)."""


class TrainParams(Section):
    """Training: model family (``tasks/models/<family>.py``), architecture or checkpoint, schedule."""

    family: Literal["yolo", "rfdetr"] = "yolo"
    # the family's architecture name: Ultralytics, a model yaml (trained from scratch); RF-DETR, "rfdetr-<size>"
    # naming train.rfdetr.size (the lineage records it as the base of a scratch run)
    model: str = "yolo26n.yaml"
    weights: Path | None = None
    epochs: PositiveInt = 30
    batch: PositiveInt = 32
    patience: int = Field(default=0, ge=0)
    # SHA-256 of checkpoints the project did not train but may open (tasks.contracts.checkpoints); default none
    trusted_checkpoints: tuple[Sha256, ...] = ()
    yolo: YoloParams = YoloParams()
    rfdetr: RfdetrParams = RfdetrParams()

    @model_validator(mode="after")
    def _model_names_the_rfdetr_size(self) -> TrainParams:
        wanted = f"rfdetr-{self.rfdetr.size}"
        if self.family == "rfdetr" and self.model != wanted:
            raise ValueError(
                f"train.model {self.model!r} with train.family rfdetr: set train.model: {wanted} "
                f"(train.rfdetr.size {self.rfdetr.size!r} chooses the architecture, train.model names it in records)"
            )
        return self


class EvaluateParams(Section):
    """Evaluation: which labeled sets, inference thresholds for COCO mAP."""

    sets: list[str] = ["golden"]
    conf: Fraction = 0.001
    iou: Fraction = 0.7
    max_det: PositiveInt = 100
    batch: PositiveInt = 16
    shards: PositiveInt = 1  # > 1: flows fan the images out over Dask in this many shards (base.dask)
    cache: bool = True  # reuse a model's detections on an unchanged set (<models>/../.cache/detections; false: never)
    cache_max_mb: PositiveInt = 1024  # the cache keeps its most recently used files within this size


Precision = Literal["fp32", "fp16", "int8"]
Hardware = Literal["cpu", "cuda"]
ExportTargetName = Literal["onnx", "onnx_int8", "openvino", "openvino_int8", "tensorrt_fp16", "tensorrt_int8"]


class PerPrecision(Section):
    """One non-negative tolerance per numeric precision; a plain number in YAML sets all three."""

    fp32: NonNegativeFloat
    fp16: NonNegativeFloat
    int8: NonNegativeFloat

    @model_validator(mode="before")
    @classmethod
    def _scalar_for_all(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"fp32": value, "fp16": value, "int8": value}
        return value

    def of(self, precision: Precision) -> float:
        """The tolerance for ``precision``."""
        return float(getattr(self, precision))


class CalibrationParams(Section):
    """INT8 calibration: a seeded random sample of training images (``base.paths.train``)."""

    images: PositiveInt = 64
    min_images: PositiveInt = 16
    seed: int | None = None  # None: base.seed
    method: Literal["minmax", "entropy", "percentile"] = "minmax"  # ONNX Runtime calibrator

    @model_validator(mode="after")
    def _min_not_above_size(self) -> CalibrationParams:
        if self.min_images > self.images:
            raise ValueError(f"min_images ({self.min_images}) is larger than images ({self.images})")
        return self


class QuantizationParams(Section):
    """How INT8 artifacts are quantized (recorded in the report's lineage)."""

    keep_head_fp32: bool = True  # the non-Conv nodes of the detection head stay FP32
    per_channel: bool = True
    activations: Literal["uint8", "int8"] = "uint8"  # ONNX Runtime activation type (U8S8 suits x86)
    nncf_preset: Literal["performance", "mixed"] = "mixed"
    fast_bias_correction: bool = True


class SpeedParams(Section):
    """Host benchmark of every artifact: batch-1 latency percentiles and throughput at ``batch``."""

    threads: PositiveInt = 2
    batch: PositiveInt = 8
    warmup: NonNegativeInt = 3
    runs: PositiveInt = 30
    batch_runs: PositiveInt = 5
    rounds: PositiveInt = 5  # the runs are spread over rounds in which the artifacts take turns
    static_shapes: bool = True  # OpenVINO: one static-shape compilation per batch size, as deployed


class ParityParams(Section):
    """Raw-output parity with PyTorch on the first ``images`` images of the first evaluate set.

    Each of PyTorch's ``top_k`` detections per image must reappear in the artifact's output with the same
    class, a score within ``score_atol`` and corners within ``box_atol_px`` (network-input pixels);
    order is ignored because near-tied scores swap. Below ``min_match`` matched the artifact has collapsed.
    """

    images: PositiveInt = 4
    top_k: PositiveInt = 5
    score_atol: PerPrecision = PerPrecision(fp32=0.002, fp16=0.02, int8=0.15)
    box_atol_px: PerPrecision = PerPrecision(fp32=0.5, fp16=1.0, int8=4.0)
    min_match: Fraction = 0.6


class ExportParams(Section):
    """Export targets, their re-checks (accuracy, parity, speed) and which artifact is deployed.

    ``targets`` must include ``onnx``: every other target is built from it and it is the fallback.
    ``max_map_drop`` is the mAP50-95 an artifact may lose against PyTorch, per precision (one number = all).
    The deployed artifact is the fastest (``select_by``) on ``target_hardware`` that passes every check and is
    at least ``min_speedup`` times faster than its higher-precision sibling; otherwise FP32 ONNX.
    """

    targets: list[ExportTargetName] = ["onnx"]
    target_hardware: Hardware = "cpu"
    opset: PositiveInt = 17
    dynamic: bool = True  # dynamic batch; the spatial size is fixed to base.imgsz
    simplify: bool = True
    max_map_drop: PerPrecision = PerPrecision(fp32=0.003, fp16=0.005, int8=0.005)
    min_speedup: float = Field(default=1.1, ge=1.0)
    select_by: Literal["latency", "throughput"] = "latency"
    calibration: CalibrationParams = CalibrationParams()
    quantization: QuantizationParams = QuantizationParams()
    speed: SpeedParams = SpeedParams()
    parity: ParityParams = ParityParams()

    @model_validator(mode="after")
    def _onnx_listed_once(self) -> ExportParams:
        if "onnx" not in self.targets:
            raise ValueError(f"targets {self.targets} must include 'onnx' (the source of every other target)")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets {self.targets} lists a target twice")
        return self


class RegistryParams(Section):
    """MLflow registry: model name, experiment, store (``MLFLOW_TRACKING_URI`` wins over ``tracking_uri``)."""

    model_name: str = "visionloop-detector"
    experiment: str = "visionloop"
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: Path = Path("mlartifacts")
    # a server store's HTTP requests (MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES in the environment win): MLflow's
    # own defaults (120 s, 7 retries with back-off) hold a stage ~20 min on a server that accepts and never answers
    timeout_s: PositiveInt = 30
    retries: NonNegativeInt = 3


class ShadowParams(Section):
    """A second version predicts a share of the images beside the champion; only the champion's answer counts."""

    alias: str = "challenger"  # or a version number
    share: Fraction = 0.1  # 0 = off; which images is a seeded choice by content hash (stable across re-runs)


class PredictParams(Section):
    """Batch prediction with the aliased model over production batches."""

    alias: str = "champion"
    conf: Fraction = 0.25
    evidence_conf: Fraction | None = 0.05  # boxes in [evidence_conf, conf) summarised per image for the sampler
    iou: Fraction = 0.7
    max_det: PositiveInt = 100
    batch_size: PositiveInt = 8
    timeout_s: Annotated[float, Field(gt=0)] | None = None  # per chunk; slower inference logs error "timeout"
    shards: PositiveInt = 1  # > 1: flows fan the images out over Dask in this many shards (base.dask)
    shadow: ShadowParams = ShadowParams()

    @model_validator(mode="after")
    def _evidence_below_conf(self) -> PredictParams:
        if self.evidence_conf is not None and not self.evidence_conf < self.conf:
            raise ValueError(f"predict.evidence_conf ({self.evidence_conf}) must be below predict.conf ({self.conf})")
        return self


class PromoteParams(Section):
    """Alias moves: optional human approval, the audit trail and its lock."""

    require_approval: bool = False
    approval_timeout_s: PositiveInt = 3600
    audit_log: Path = Path("data/audit/aliases.jsonl")
    lock_timeout_s: PositiveInt = 60
    lease_ttl_s: Annotated[float, Field(gt=0)] = 60  # MLflow server: a lease outlives its holder's last heartbeat


class GateSpeedParams(Section):
    """The gate's paired latency pass: both models' timed artifacts take turns, round by round, on the same images.

    ``threads`` is 1 by default on purpose: with one intra-op thread both models run on the calling thread, so a
    noisy neighbour slows both alike; with more, each session's own worker threads land on a busy or an idle core
    for the whole pass, a bias that no pairing removes.
    """

    threads: PositiveInt = 1
    rounds: PositiveInt = 10
    runs: PositiveInt = 5  # timed batch-1 runs per model and round; their median is the round's reading
    warmup: NonNegativeInt = 3
    images: PositiveInt = 4  # the first golden images, letterboxed; each round cycles through them


class GateParams(Section):
    """Candidate vs champion on the same sets (golden + production holdouts); ``null`` switches a rule off.

    Differences are candidate − champion in mAP50-95 (or AP50-95 per class); intervals come from a paired
    bootstrap over images.
    """

    min_production_gain: float = 0.0
    max_golden_loss: NonNegativeFloat | None = 0.01
    max_golden_loss_ci: NonNegativeFloat | None = None
    max_class_drop: NonNegativeFloat | None = 0.10
    min_class_boxes: NonNegativeInt = 10
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    max_latency_factor: Annotated[float, Field(gt=0)] | None = 1.5
    resamples: PositiveInt = 1000
    level: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    seed: int | None = None  # None: base.seed
    speed: GateSpeedParams = GateSpeedParams()
    license: LicenseParams = LicenseParams()


class ValidateParams(Section):
    """Great Expectations checks of a cycle's new labels; failing images are quarantined, not trained on.

    ``leak_max_distance`` is the largest perceptual-hash Hamming distance (of ``phash_size**2`` bits) at which a
    new image counts as a copy of a golden/holdout image. ``manifest`` is an optional file in the cycle's label
    folder declaring image sizes (``image_id``, ``width``, ``height``).
    """

    max_quarantine_share: Fraction = 0.2
    min_box_px: NonNegativeFloat = 2.0
    boxes_per_image: tuple[NonNegativeInt, NonNegativeInt] = (0, 50)
    phash_size: Annotated[int, Field(ge=4, le=32)] = 16
    leak_max_distance: NonNegativeInt = 32
    manifest: str = "manifest.json"
    log_sample_rows: PositiveInt = 10_000
    data_docs: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ValidateParams:
        low, high = self.boxes_per_image
        if low > high:
            raise ValueError(f"boxes_per_image = {[low, high]}: need min <= max")
        if self.leak_max_distance >= self.phash_size**2:
            raise ValueError(
                f"leak_max_distance = {self.leak_max_distance} flags every image "
                f"(the hash has {self.phash_size**2} bits)"
            )
        return self


class LabelParams(Section):
    """Labeling: Label Studio (or a folder exchange) fed with sampled images pre-annotated by the champion.

    ``LABEL_STUDIO_URL`` in the environment wins over ``url``, ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` over
    ``document_root`` (the folder the server serves images below); the token comes only from ``LABEL_STUDIO_API_KEY``.
    The run waits for labels while fewer than ``min_labeled`` images of the cycle are labeled and some are queued.
    ``outbox``/``inbox`` (backend ``files``; None: ``<base.paths.labels>/outbox`` and ``/inbox``).
    """

    backend: Literal["labelstudio", "files"] = "labelstudio"
    url: str = "http://127.0.0.1:8080"
    project_title: str = Field(default="visionloop", min_length=3, max_length=50)  # Label Studio: 3+
    document_root: Path = Path(".")
    min_labeled: NonNegativeInt = 50
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    retries: NonNegativeInt = 3
    retry_delay_s: NonNegativeFloat = 2.0
    outbox: Path | None = None
    inbox: Path | None = None
    wait_timeout_s: NonNegativeFloat = 0.0  # the loop re-collects until min_labeled or this long, then waits for labels
    poll_s: Annotated[float, Field(gt=0)] = 10.0  # between collections while waiting


# The stage is called ``validate``, which shadows pydantic's deprecated ``BaseModel.validate`` classmethod (unused
# here); pydantic supports such fields but warns on every import.
warnings.filterwarnings("ignore", message='Field name "validate" in "Params" shadows', category=UserWarning)


class RecencyParams(Section):
    """How much more often the trainer sees recent production cycles.

    A cycle of age ``a`` (0 = the newest merged cycle) has weight ``decay ** a`` and is listed
    ``clamp(round(max_repeat * weight), 1, max_repeat)`` times per epoch; historical images ``historical_repeat`` times.
    """

    decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    max_repeat: PositiveInt = 4
    historical_repeat: PositiveInt = 1


class MergeParams(Section):
    """Merge: historical data + every labeled production cycle into append-only shards and a manifest.

    ``enabled: false`` (or no production image merged yet) keeps ``train`` on ``base.paths.train``/``val``.
    Per newly merged cycle, ``holdout_fraction`` of its images become its frozen production holdout and
    ``val_fraction`` validate; the rest train. A shard holds at most ``shard_size`` images.
    """

    enabled: bool = True
    holdout_fraction: Fraction = 0.2
    val_fraction: Fraction = 0.0
    shard_size: PositiveInt = 1000
    seed: int | None = None  # None: base.seed
    recency: RecencyParams = RecencyParams()

    @model_validator(mode="after")
    def _fractions(self) -> MergeParams:
        if self.holdout_fraction + self.val_fraction >= 1.0:
            raise ValueError(
                f"holdout_fraction ({self.holdout_fraction}) + val_fraction ({self.val_fraction}) must stay below 1"
            )
        return self


class CycleParams(Section):
    """One continuous-learning cycle (``flows/continuous_learning.py``) and its report (``tasks/cycle.py``)."""

    warm_start: bool = True  # retrain from the champion's weights (false: train.weights / train.model)
    epochs: PositiveInt | None = 10  # retraining epochs per cycle (None: train.epochs)
    predict_first: bool = True  # log the champion's predictions on batches it has not seen before sampling
    histogram_bins: Annotated[int, Field(ge=2, le=200)] = 20  # confidence histograms of the report
    cost: CostParams = CostParams()  # prices of cost.json (tasks/config/cost.py): null = not shown


DoctorCheck = Literal["labels", "merged", "registry", "prediction_log", "production", "temp_files"]
DOCTOR_CHECKS: tuple[DoctorCheck, ...] = ("labels", "merged", "registry", "prediction_log", "production", "temp_files")


class DoctorParams(Section):
    """``make doctor``: consistency checks across the stores (``tasks/doctor.py``); a check left out is not run.

    ``labelstudio_without_env``: check Label Studio at ``label.url`` even when ``LABEL_STUDIO_URL`` is unset (false:
    that check is reported as skipped, never as passed).
    """

    checks: list[DoctorCheck] = Field(default_factory=lambda: list(DOCTOR_CHECKS))
    labelstudio_without_env: bool = False
    required_tags: list[str] = Field(
        default_factory=lambda: ["train_run_id", "dataset_md5", "git_commit", "params_hash"]
    )  # lineage tags every registered version must carry


IngestFormat = Literal["jsonl", "json", "parquet"]


class IngestParams(Section):
    """``python -m tasks.ingest FILE`` and its HTTP endpoint (``--serve``, 127.0.0.1 only): prediction records from
    another serving stack into the log (``tasks/ingest.py``)."""

    formats: list[IngestFormat] = Field(default=["jsonl", "json", "parquet"], min_length=1)
    # <ingest id>.jsonl: each refused record, its line, its reasons; None: <base.paths.quarantine>/ingest
    quarantine: Path | None = None
    default_source: str = Field(default="default", min_length=1)  # ``source`` of records that name none
    box_tolerance_px: NonNegativeFloat = 0.5  # a box corner may lie this far outside the image (float rounding)
    lock_timeout_s: PositiveInt = 60  # wait for another ingest appending to the same log
    port: Annotated[int, Field(ge=1024, le=65535)] = 9110  # --serve: http://127.0.0.1:<port>/predictions
    max_request_rows: PositiveInt = 10_000  # a POST with more records is refused whole (413)
    max_request_bytes: PositiveInt = 16 * 1024 * 1024  # a POST body larger than this is refused unread (413)
