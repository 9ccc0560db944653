"""The records a fanned-out ``predict`` run passes between its plan, its shards (on Dask workers) and its combine.

Small and picklable: paths, names and log records, never a model. :func:`tasks.predict.plan` makes a
:class:`PredictPlan`; :func:`tasks.predict.run_shard` turns one :class:`PredictShard` into a :class:`ShardResult`;
:func:`tasks.predict.combine` logs them. The single-process run passes the very same records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tasks.contracts.deployed import Deployed
from tasks.contracts.model_version import ModelVersionInfo
from tasks.contracts.prediction_log import ImageDetections


@dataclass(frozen=True)
class ShadowPlan:
    """A version predicting a share of the images beside the champion (``predict.shadow``): which, and its artifact."""

    info: ModelVersionInfo
    alias: str
    deployed: Deployed
    share: float


@dataclass(frozen=True)
class ImageChunk:
    """One model call's images of one batch, in listing order, with their sources: what a shard carries.

    ``paths``: local files, or ``s3://bucket/key`` URIs when production lives on S3 (``base.storage.production``;
    the shard reads its own images from there, in the worker).
    """

    batch: str
    paths: tuple[Path | str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class PredictShard:
    """A contiguous run of whole chunks (:func:`tasks.core.shards.plan_shards`): one task of a fanned-out run."""

    index: int
    chunks: tuple[ImageChunk, ...]


@dataclass(frozen=True)
class PredictPlan:
    """Everything the shards of one run need, resolved once: small and picklable (paths and records, no model).

    Attributes:
        info, alias, deployed: the predicting version, the alias it was found by, and the artifact it runs (the
            fallback decided when the plan opened it).
        shadow: the shadow version (its opened artifact), None when off.
        threads: the intra-op threads of every shard's inference session (the rest is ``predict``'s settings).
        batches: the batches of the run, in order (a batch without images has no chunk but is still logged).
        shards: the shards in order; their chunks, concatenated, are every image of every batch once, in order.
        started: wall-clock time (epoch s) the run started, for the report's ``wall_s``.
    """

    info: ModelVersionInfo
    alias: str
    deployed: Deployed
    shadow: ShadowPlan | None
    threads: int
    batches: tuple[str, ...]
    shards: tuple[PredictShard, ...]
    started: float

    def for_shards(self) -> PredictPlan:
        """What each shard gets: the plan without the shards (only the combine reads them, to check the results)."""
        return dataclasses.replace(self, shards=())


@dataclass(frozen=True)
class PredictedChunk:
    """One chunk's log records (the champion's and the shadow's) and the images that got error rows, with why.

    ``read_s``: seconds the loop spent getting its images read and decoded (wall; S3 reads overlap on threads);
    ``infer_s``: seconds in the model calls (the champion's and the shadow's). Where the work went, summed over its
    images and calls wherever they ran (a read thread or the loop): ``file_read_s`` (the bytes), ``decode_s``
    (hash, decode, statistics), ``preprocess_s`` (letterbox), ``network_s`` (forward), ``postprocess_s``
    (decoding the output, NMS).
    """

    batch: str
    records: list[ImageDetections]
    shadow_records: list[ImageDetections]
    skipped: dict[str, str]
    read_s: float = 0.0
    infer_s: float = 0.0
    file_read_s: float = 0.0
    decode_s: float = 0.0
    preprocess_s: float = 0.0
    network_s: float = 0.0
    postprocess_s: float = 0.0


@dataclass(frozen=True)
class ShardResult:
    """What one shard hands back to :func:`combine`: its chunks' records, in chunk order.

    ``open_s``: seconds opening the model(s) in the shard (0 when the plan's sessions were handed in); ``wall_s``:
    the whole shard, opening included (with its chunks' ``read_s`` and ``infer_s``: where a run's time went).
    """

    index: int
    chunks: tuple[PredictedChunk, ...]
    open_s: float = 0.0
    wall_s: float = 0.0
