"""Config of the ``compress`` stage: structured channel pruning of the trained checkpoint, then a short fine-tune.

Read by :mod:`tasks.compress`. Off by default (``enabled: false``): the stage then records a pass-through and the
export stage sees only the unpruned checkpoint. How much is pruned is said one of two ways: ``ratio`` (the share of
channels removed from every prunable layer) or ``macs_reduction`` (the share of multiply-accumulates at
``base.imgsz`` to remove: the stage searches the per-layer ratio that reaches it). ``round_to`` keeps every layer's
channels a multiple of it (vector units run whole multiples of 8 or 16 channels at once); a layer that the ratio and
the rounding would leave with no channel at all is refused before any work, naming the layer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tasks.config.base import NonNegativeFloat, PositiveInt, Section

CompressMethod = Literal["magnitude"]


class CompressParams(Section):
    """``compress``: prune (``method``) to ``ratio`` or ``macs_reduction``, fine-tune ``epochs`` with distillation.

    Attributes:
        enabled: run the stage (false: a pass-through record; export ships from the unpruned checkpoint).
        method: channel importance: ``magnitude`` (L2 norm of each coupled group of channels, torch-pruning's
            ``GroupMagnitudeImportance``).
        ratio: share of channels removed from every prunable layer, in (0, 1); or None with ``macs_reduction``.
        macs_reduction: share of the model's MACs at ``base.imgsz`` to remove, in (0, 1); or None with ``ratio``.
        round_to: kept channels are a multiple of this (1: any count).
        epochs: fine-tune epochs on the training data of the train stage (the merged data in a cycle).
        distill: fine-tune against the unpruned model's outputs as well as the labels (logit distillation).
        distill_weight: weight of the distillation term beside the detection loss.
        fine_tune_args: the family trainer's own arguments for the fine-tune only, over those the train stage
            uses (Ultralytics: ``optimizer`` with ``lr0``, ``warmup_epochs``, ``close_mosaic``, ...); the family's
            section refuses a key the stage owns (``epochs`` is ``compress.epochs``).
        max_map_drop: mAP50-95 a compressed artifact may lose beyond ``export.max_map_drop`` of its precision,
            against the unpruned PyTorch model, on every set; the total is capped by ``max_total_map_drop``.
        max_total_map_drop: the rule that governs: a compressed artifact never loses more than this against the
            unpruned PyTorch model on any set.
    """

    enabled: bool = False
    method: CompressMethod = "magnitude"
    ratio: float | None = None
    macs_reduction: float | None = 0.4
    round_to: PositiveInt = 8
    epochs: PositiveInt = 10
    distill: bool = False
    distill_weight: float = Field(default=1.0, gt=0)
    fine_tune_args: dict[str, Any] = Field(default_factory=dict)
    max_map_drop: NonNegativeFloat = 0.002
    max_total_map_drop: NonNegativeFloat = 0.005

    @model_validator(mode="after")
    def _one_amount(self) -> CompressParams:
        if (self.ratio is None) == (self.macs_reduction is None):
            raise ValueError(
                f"compress: set exactly one of ratio ({self.ratio}) and macs_reduction ({self.macs_reduction}); "
                "the other must be null"
            )
        for name in ("ratio", "macs_reduction"):
            value = getattr(self, name)
            if value is not None and value >= 1:
                raise ValueError(
                    f"compress.{name} = {value} would leave every prunable layer with zero channels: "
                    "it must be below 1 (0.3 removes 30 %)"
                )
            if value is not None and value <= 0:
                raise ValueError(f"compress.{name} = {value} prunes nothing: it must be above 0 (or compress off)")
        return self
