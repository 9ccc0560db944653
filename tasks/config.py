"""Typed configuration: one ``params.yaml``, one pydantic model per section.

Every stage ``main()`` and every flow calls :func:`load_params`; nothing else reads ``params.yaml``.
Models forbid unknown keys, so a typo fails with its key path (``train.epoch: extra inputs are not
permitted``) instead of being silently ignored.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

DEFAULT_PARAMS = "params.yaml"

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Base of every config model: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Where data, models and reports live (relative to the working directory or absolute)."""

    world: Path = Path("data/world")
    train: Path = Path("data/world/historical/train")
    val: Path = Path("data/world/historical/val")
    golden: Path = Path("data/world/golden")
    production: Path = Path("data/world/production")
    oracle: Path = Path("data/world/oracle")
    predictions: Path = Path("data/predictions")
    samples: Path = Path("data/samples")
    labels: Path = Path("data/labels")
    quarantine: Path = Path("data/quarantine")
    holdouts: Path = Path("data/holdouts")
    merged: Path = Path("data/merged")
    models: Path = Path("models")
    reports: Path = Path("reports")


class BaseParams(Section):
    """Settings shared by every stage."""

    project: str = "visionloop"
    seed: int = 0
    classes: list[str] = Field(min_length=1)
    imgsz: PositiveInt = 160
    device: str = "cpu"
    # YOLO26 has two heads: one-to-one (NMS-free, top-k inside the network) and one-to-many (class-aware NMS on
    # the host). One choice for every .pt evaluation and every export, so PyTorch and its artifacts agree.
    nms_free: bool = False
    paths: Paths = Paths()

    @model_validator(mode="after")
    def _unique_classes(self) -> BaseParams:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        return self


def _check_render_values(owner: str, values: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the field when a render range or weight list is impossible.

    Shared by :class:`RenderSettings` and :class:`ScenarioOverride`; ``None`` means "not set" and is skipped.
    """
    for name in ("objects_per_image", "object_scale", "clutter"):
        pair = values.get(name)
        if pair is not None and not 0 <= pair[0] <= pair[1]:
            raise ValueError(f"{owner}.{name} = {list(pair)}: need 0 <= min <= max")
    scale = values.get("object_scale")
    if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(
            f"{owner}.object_scale = {list(scale)}: fractions of the shorter side, need 0 < min <= max <= 1"
        )
    for name in ("class_weights", "background_weights"):
        weights = values.get(name)
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"{owner}.{name} = {weights}: need non-negative weights with a positive sum")
    if values.get("backgrounds") is not None and not values["backgrounds"]:
        raise ValueError(f"{owner}.backgrounds is empty: name at least one background kind")


NonNegativeFloat = Annotated[float, Field(ge=0.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class RenderSettings(Section):
    """How the synthetic world draws a scene; a scenario overrides a subset of these.

    ``background_weights`` (``None`` = uniform) are the sampling probabilities of ``backgrounds``; drift
    uses them to mix the source kinds with a scenario's kinds by severity.
    """

    objects_per_image: tuple[NonNegativeInt, NonNegativeInt] = (1, 4)
    object_scale: tuple[float, float] = (0.12, 0.30)
    class_weights: list[NonNegativeFloat] | None = None
    brightness: NonNegativeFloat = 1.0
    contrast: NonNegativeFloat = 1.0
    color_cast: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] = (1.0, 1.0, 1.0)
    blur_sigma: NonNegativeFloat = 0.0
    motion_blur: NonNegativeInt = 0
    noise_std: NonNegativeFloat = 4.0
    clutter: tuple[NonNegativeInt, NonNegativeInt] = (0, 0)
    backgrounds: list[str] = ["smooth", "stripes", "checker"]
    background_weights: list[NonNegativeFloat] | None = None
    occlusion: Fraction = 0.3
    class_color: Fraction = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> RenderSettings:
        _check_render_values("render settings", dict(self))
        if self.background_weights is not None and len(self.background_weights) != len(self.backgrounds):
            raise ValueError(
                f"background_weights has {len(self.background_weights)} entries, "
                f"backgrounds {self.backgrounds} has {len(self.backgrounds)}"
            )
        return self


class ScenarioOverride(Section):
    """A partial :class:`RenderSettings`: only the fields a drift scenario changes (``None`` = unchanged)."""

    objects_per_image: tuple[NonNegativeInt, NonNegativeInt] | None = None
    object_scale: tuple[float, float] | None = None
    class_weights: list[NonNegativeFloat] | None = None
    brightness: NonNegativeFloat | None = None
    contrast: NonNegativeFloat | None = None
    color_cast: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] | None = None
    blur_sigma: NonNegativeFloat | None = None
    motion_blur: NonNegativeInt | None = None
    noise_std: NonNegativeFloat | None = None
    clutter: tuple[NonNegativeInt, NonNegativeInt] | None = None
    backgrounds: list[str] | None = None
    background_weights: list[NonNegativeFloat] | None = None
    occlusion: Fraction | None = None
    class_color: Fraction | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ScenarioOverride:
        _check_render_values("scenario", dict(self))
        if self.background_weights is not None and (
            self.backgrounds is None or len(self.background_weights) != len(self.backgrounds)
        ):
            raise ValueError("scenario background_weights needs backgrounds of the same length in the same scenario")
        return self


class ProductionStream(Section):
    """The dated production batches and the drift they follow."""

    scenario: list[str] = Field(default_factory=list)
    batches: PositiveInt = 2
    images_per_batch: PositiveInt = 100
    start_date: dt.date = dt.date(2026, 11, 2)
    severity_start: Fraction = 0.5
    severity_end: Fraction = 1.0


class AnnotatorSimParams(Section):
    """The annotator simulator (``tasks/sim/annotator.py``; demo, tests, benchmarks only): oracle boxes plus noise.

    A box whose shorter side is below ``small_px`` pixels is missed with probability ``drop_small``; every
    corner moves by up to ± ``jitter`` of the box's width/height; a ``skip`` share of tasks is skipped.
    """

    small_px: NonNegativeFloat = 0.0
    drop_small: Fraction = 0.0
    jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    skip: Fraction = 0.0
    seed: int | None = None  # None: base.seed


class WorldParams(Section):
    """Synthetic world: historical + golden sets from the source domain, drifting production batches."""

    enabled: bool = True
    image_size: tuple[PositiveInt, PositiveInt] = (160, 160)
    train_images: PositiveInt = 600
    val_images: PositiveInt = 100
    golden_images: PositiveInt = 200
    source: RenderSettings = RenderSettings()
    scenarios: dict[str, ScenarioOverride] = Field(default_factory=dict)
    production: ProductionStream = ProductionStream()
    annotator: AnnotatorSimParams = AnnotatorSimParams()  # demo/tests only: the annotator simulator

    @model_validator(mode="after")
    def _known_scenarios(self) -> WorldParams:
        unknown = [name for name in self.production.scenario if name not in self.scenarios]
        if unknown:
            raise ValueError(
                f"production.scenario names {unknown} not defined under world.scenarios "
                f"(defined: {sorted(self.scenarios)})"
            )
        return self


class TrainParams(Section):
    """Training: model family, architecture or checkpoint, schedule."""

    family: Literal["yolo"] = "yolo"
    model: str = "yolo26n.yaml"
    weights: Path | None = None
    epochs: PositiveInt = 30
    batch: PositiveInt = 32
    workers: int = Field(default=2, ge=0)
    lr0: float = Field(default=0.01, gt=0)
    patience: int = Field(default=0, ge=0)
    extra_args: dict[str, Any] = Field(default_factory=dict)


class EvaluateParams(Section):
    """Evaluation: which labeled sets, inference thresholds for COCO mAP."""

    sets: list[str] = ["golden"]
    conf: Fraction = 0.001
    iou: Fraction = 0.7
    max_det: PositiveInt = 100
    batch: PositiveInt = 16


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


class PredictParams(Section):
    """Batch prediction with the aliased model over production batches."""

    alias: str = "champion"
    conf: Fraction = 0.25
    iou: Fraction = 0.7
    max_det: PositiveInt = 100
    batch_size: PositiveInt = 8
    threads: PositiveInt = 2


class PromoteParams(Section):
    """Alias moves: optional human approval, the audit trail and its lock."""

    require_approval: bool = False
    approval_timeout_s: PositiveInt = 3600
    audit_log: Path = Path("data/audit/aliases.jsonl")
    lock_timeout_s: PositiveInt = 60


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


class SampleStrategy(Section):
    """What every sampling strategy has: a priority weight and its own image budget (0 = off)."""

    weight: NonNegativeFloat = 1.0
    budget: NonNegativeInt = 10


class RandomStrategy(SampleStrategy):
    """A seeded uniform share of the window's images (hash of seed, cycle and image SHA-256)."""

    rate: Fraction = 0.01


class LowConfidenceStrategy(SampleStrategy):
    """Images with boxes whose confidence falls in ``band`` (``[low, high)``); more such boxes score higher."""

    band: tuple[Fraction, Fraction] = (0.1, 0.5)

    @model_validator(mode="after")
    def _ordered_band(self) -> LowConfidenceStrategy:
        if not self.band[0] < self.band[1]:
            raise ValueError(f"band = {list(self.band)}: need low < high")
        return self


class EntropyStrategy(SampleStrategy):
    """Mean binary entropy (bits) of an image's box confidences, at least ``min_score``."""

    min_score: Fraction = 0.8


class MarginStrategy(SampleStrategy):
    """The box closest to the ``threshold`` decision: ``1 - |conf - threshold| / max(threshold, 1 - threshold)``."""

    threshold: Fraction = 0.5
    min_score: Fraction = 0.8


class ClassBalancedStrategy(SampleStrategy):
    """Images with rarely predicted classes: rarest-class frequency / frequency of the image's rarest class."""

    min_score: Fraction = 0.5


class DisagreementStrategy(SampleStrategy):
    """Champion vs another model version on the same image: ``1 - min(agreeing boxes) / max(box counts)``.

    A box agrees when the other side has a box of the same class at IoU >= ``iou`` (each side counted); ``aliases``
    limits the other rows to those logged under these aliases (None = any other model version).
    """

    iou: Fraction = 0.5
    min_score: Fraction = 0.2
    aliases: list[str] | None = None


class DriftStrategy(SampleStrategy):
    """A seeded share ``rate`` of the images of batches the drift monitor flagged."""

    rate: Fraction = 0.1


class SampleStrategies(Section):
    """The sampling strategies by name (an unknown name is an error; null or ``budget: 0`` turns one off)."""

    random: RandomStrategy | None = RandomStrategy(weight=0.5, budget=10)
    low_confidence: LowConfidenceStrategy | None = LowConfidenceStrategy(budget=20)
    entropy: EntropyStrategy | None = EntropyStrategy(budget=10)
    margin: MarginStrategy | None = MarginStrategy(budget=10)
    class_balanced: ClassBalancedStrategy | None = ClassBalancedStrategy(weight=0.8, budget=10)
    disagreement: DisagreementStrategy | None = DisagreementStrategy(weight=1.5, budget=15)
    drift: DriftStrategy | None = DriftStrategy(weight=1.2, budget=15)


class SampleParams(Section):
    """Which production images go to labeling each cycle (see ``tasks/sample.py`` for the selection rules)."""

    budget: NonNegativeInt = 60
    max_per_day: PositiveInt | None = 40
    window_days: PositiveInt = 7
    alias: str = "champion"
    phash_distance: Annotated[int, Field(ge=0, le=64)] | None = 6
    drift_batches: list[str] = Field(default_factory=list)
    strategies: SampleStrategies = SampleStrategies()


class CycleParams(Section):
    """One continuous-learning cycle (``flows/continuous_learning.py``) and its report (``tasks/cycle.py``)."""

    warm_start: bool = True  # retrain from the champion's weights (false: train.weights / train.model)
    epochs: PositiveInt | None = 10  # retraining epochs per cycle (None: train.epochs)
    predict_first: bool = True  # log the champion's predictions on batches it has not seen before sampling
    histogram_bins: Annotated[int, Field(ge=2, le=200)] = 20  # confidence histograms of the report


class Params(Section):
    """The whole ``params.yaml`` (plus any overlays layered over it, see :func:`load_params`)."""

    _sources: tuple[str, ...] = PrivateAttr(default=())

    base: BaseParams
    world: WorldParams = WorldParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    registry: RegistryParams = RegistryParams()
    predict: PredictParams = PredictParams()
    sample: SampleParams = SampleParams()
    label: LabelParams = LabelParams()
    validate: ValidateParams = ValidateParams()  # type: ignore[assignment]  # shadows BaseModel.validate (deprecated)
    merge: MergeParams = MergeParams()
    gate: GateParams = GateParams()
    promote: PromoteParams = PromoteParams()
    cycle: CycleParams = CycleParams()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        weights = self.world.source.class_weights
        if weights is not None and len(weights) != len(self.base.classes):
            raise ValueError(
                f"world.source.class_weights has {len(weights)} entries, base.classes has {len(self.base.classes)}"
            )
        for name, scenario in self.world.scenarios.items():
            if scenario.class_weights is not None and len(scenario.class_weights) != len(self.base.classes):
                raise ValueError(
                    f"world.scenarios.{name}.class_weights has {len(scenario.class_weights)} entries, "
                    f"base.classes has {len(self.base.classes)}"
                )
        for name in self.evaluate.sets:
            if name not in Paths.model_fields:
                raise ValueError(f"evaluate.sets: {name!r} is not a base.paths entry")
        return self

    def digest(self) -> str:
        """Return a short stable hash of the effective configuration (for lineage)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def sources(self) -> tuple[str, ...]:
        """The files these params were read from, base first, then each overlay (empty: built in code)."""
        return self._sources

    def stamp(self) -> dict[str, Any]:
        """The effective-params record every report carries: the files layered, and the digest of the result."""
        return {"sources": list(self.sources), "digest": self.digest()}


class VisionloopError(Exception):
    """Base of the errors a stage reports as a clean one-line failure (``stage_main`` exits 1 with the message)."""


class ConfigError(VisionloopError, ValueError):
    """``params.yaml`` is missing, unreadable or does not match the schema."""


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} invalid setting(s)"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, nested dicts key by key (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


EXTENDS_KEY = "extends"


def _read_layer(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """One params file as a dict, with the files it ``extends:`` merged under it (base first)."""
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (pass --params PATH)")
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: 'extends' chain loops: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    parent = raw.pop(EXTENDS_KEY, None)
    if parent is None:
        return raw, [path]
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' must be a path (relative to this file), got {parent!r}")
    base, files = _read_layer(path.parent / parent, (*chain, path.resolve()))
    return deep_merge(base, raw), [*files, path]


def load_params(
    path: str | Path | Sequence[str | Path] | None = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Params:
    """Read and validate a params file, or several layered ones.

    Layering: each file may name its base with ``extends: <path relative to it>``; several paths are
    merged left to right (``load_params(["params.yaml", "site.yaml"])``: the later file's keys win, nested
    sections key by key). Only the merged result is validated, so an overlay holds just the keys it changes.

    Args:
        path: YAML file (or files) with a ``base:`` section and one section per stage.
        overrides: nested dict merged over the files (flow parameters use this), e.g.
            ``{"train": {"epochs": 2}}``.

    Returns:
        The validated, immutable :class:`Params`; ``params.sources`` names the files, base first.

    Raises:
        ConfigError: file missing, not YAML, an ``extends`` loop, or a key unknown / mistyped (message lists
            key paths and the files read).
    """
    path = DEFAULT_PARAMS if path is None else path
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise ConfigError("no params file given (pass --params PATH)")
    raw: dict[str, Any] = {}
    files: list[Path] = []
    for layer in paths:
        data, read = _read_layer(layer)
        raw = deep_merge(raw, data)
        files += [f for f in read if f not in files]
    if overrides:
        raw = deep_merge(raw, overrides)
    where = Path(" + ".join(str(f) for f in files))
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(where, exc)) from None
    params._sources = tuple(str(f) for f in files)
    return params


def stage_argparser(stage: str, doc: str | None = None) -> argparse.ArgumentParser:
    """Return the common CLI of ``python -m tasks.<stage>``: ``--params PATH``."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=doc)
    parser.add_argument(
        "--params",
        action="append",
        default=None,
        help="params file; repeat to layer overlays over it, later wins (default: params.yaml)",
    )
    return parser
