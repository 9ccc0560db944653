"""Config of the ``sample`` stage: the selection's budget and caps, and one model per sampling strategy.

Read by :mod:`tasks.sample` (the stage) and :mod:`tasks.decisions.sampling` (the scores); the evidence the scores
read is what ``predict`` logs (``predict.conf``, ``predict.evidence_conf``: :mod:`tasks.config.sections`). Every
strategy has a ``weight`` and its own ``budget`` (0 or null = off); the names are the fields of
:class:`SampleStrategies`, in the order of :data:`tasks.decisions.sampling.STRATEGIES`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from tasks.config.base import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Section


class SampleStrategy(Section):
    """What every sampling strategy has: a priority weight and its own image budget (0 = off)."""

    weight: NonNegativeFloat = 1.0
    budget: NonNegativeInt = 10


class RandomStrategy(SampleStrategy):
    """A seeded uniform share of the window's images (hash of seed, cycle and image SHA-256)."""

    rate: Fraction = 0.01


class LowConfidenceStrategy(SampleStrategy):
    """Images with boxes whose confidence falls in ``band`` (``[low, high)``); more such boxes score higher.

    An image with none but sub-threshold evidence (``predict.evidence_conf``) scores below them, by its strongest
    missed box (``tasks/decisions/sampling.py``).
    """

    band: tuple[Fraction, Fraction] = (0.1, 0.5)

    @model_validator(mode="after")
    def _ordered_band(self) -> LowConfidenceStrategy:
        if not self.band[0] < self.band[1]:
            raise ValueError(f"band = {list(self.band)}: need low < high")
        return self


class EntropyStrategy(SampleStrategy):
    """Mean binary entropy (bits) of an image's box confidences and its strongest missed box, at least ``min_score``."""

    min_score: Fraction = 0.8


class MarginStrategy(SampleStrategy):
    """The box with the smallest class margin ``m`` (top-1 minus top-2 class score): ``1 - m``.

    A box logged without a margin (older rows, an end-to-end head, one class) counts the distance of its confidence
    to the ``threshold`` decision instead: ``1 - |conf - threshold| / max(threshold, 1 - threshold)``.
    """

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


class DiversityStrategy(SampleStrategy):
    """Cover the window's look: k-center greedy over a cheap per-image embedding (``tasks/decisions/sampling.py``).

    The embedding is the log's input statistics (brightness, contrast, sharpness, mean_r/g/b) and the image's box
    count, each standardised over the window; deterministic given ``base.seed`` and the cycle. Off by default
    (budget 0): its effect on label efficiency is not measured yet.
    """


class SampleStrategies(Section):
    """The sampling strategies by name (an unknown name is an error; null or ``budget: 0`` turns one off)."""

    random: RandomStrategy | None = RandomStrategy(weight=0.5, budget=10)
    low_confidence: LowConfidenceStrategy | None = LowConfidenceStrategy(budget=20)
    entropy: EntropyStrategy | None = EntropyStrategy(budget=10)
    margin: MarginStrategy | None = MarginStrategy(budget=10)
    class_balanced: ClassBalancedStrategy | None = ClassBalancedStrategy(weight=0.8, budget=10)
    disagreement: DisagreementStrategy | None = DisagreementStrategy(weight=1.5, budget=15)
    drift: DriftStrategy | None = DriftStrategy(weight=1.2, budget=15)
    diversity: DiversityStrategy | None = DiversityStrategy(budget=0)


class SampleParams(Section):
    """Which production images go to labeling each cycle (see ``tasks/sample.py`` for the selection rules)."""

    budget: NonNegativeInt = 60
    max_per_day: PositiveInt | None = 40
    window_days: PositiveInt = 7
    alias: str = "champion"
    phash_distance: Annotated[int, Field(ge=0, le=64)] | None = 6
    drift_batches: list[str] = Field(default_factory=list)
    strategies: SampleStrategies = SampleStrategies()
