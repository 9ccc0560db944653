"""Config building blocks: the frozen ``Section`` base, value types, ``base.paths`` and ``base``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PARAMS = "params.yaml"

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


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


class DaskParams(Section):
    """Where the ``predict`` and ``evaluate`` shards run when a flow fans them out (``<stage>.shards`` > 1).

    The scheduler address comes from ``DASK_SCHEDULER_ADDRESS`` when set, else ``address``; with neither, a
    LocalCluster of ``workers`` processes (one task thread each) starts on 127.0.0.1 for the flow run (~4 s).
    """

    address: str | None = None  # an existing scheduler, e.g. tcp://10.0.0.5:8786; None: a LocalCluster
    workers: PositiveInt = 2  # LocalCluster worker processes, one task thread each
    threads: PositiveInt = 1  # intra-op threads of each shard's inference session (workers x threads = cores)
    timeout_s: Annotated[float, Field(gt=0)] = 10.0  # connecting to the scheduler


S3_LOCATION = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$"


class StorageParams(Section):
    """Object storage (S3 through boto3) instead of local folders, for what grows every night.

    Each value is ``s3://bucket/prefix`` or null (the local folder under ``paths`` is the store). Endpoint, region
    and credentials come only from the environment (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_REGION``,
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), never from params.

    Attributes:
        production: production batches ``<prefix>/<batch>/images/*`` (+ optional ``sources.csv``); the world stage
            uploads the batches it renders there, ``predict`` lists and streams them from there. ``paths.production``
            is then only the world's local staging folder.
        predictions: the prediction log as the same hive-partitioned Parquet dataset (unique part objects made
            visible by a manifest: S3 has no rename). ``paths.predictions`` then holds a read-through mirror of the
            published (immutable) parts that the local readers scan.
    """

    production: Annotated[str, Field(pattern=S3_LOCATION)] | None = None
    predictions: Annotated[str, Field(pattern=S3_LOCATION)] | None = None


class BaseParams(Section):
    """Settings shared by every stage."""

    project: str = "visionloop"
    seed: int = 0
    classes: list[str] = Field(min_length=1)
    imgsz: PositiveInt = 160
    device: str = "cpu"
    threads: PositiveInt = 2  # intra-op threads of every inference session (predict, evaluate, export checks)
    paths: Paths = Paths()
    dask: DaskParams = DaskParams()
    storage: StorageParams = StorageParams()

    @model_validator(mode="after")
    def _unique_classes(self) -> BaseParams:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        return self


class VisionloopError(Exception):
    """Base of the errors a stage reports as a clean one-line failure (``stage_main`` exits 1 with the message)."""
