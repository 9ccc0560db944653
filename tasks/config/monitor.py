"""Config of the production end (``monitor``): drift windows and rules, the retrain trigger, the watch after a
promotion (automatic rollback), alerts and the metrics export. Batch prediction's shadow share is ``predict.shadow``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tasks.config.base import Fraction, NonNegativeFloat, PositiveInt, Section

BaselineSet = Literal["val", "golden", "train"]
AlertEvent = Literal["drift", "labels_waiting", "approval_pending", "rollback", "failed_run"]


def _default_sets() -> list[BaselineSet]:
    return ["val", "golden"]


def _default_events() -> list[AlertEvent]:
    return ["drift", "labels_waiting", "approval_pending", "rollback", "failed_run"]


class DriftRules(Section):
    """When a window of the prediction log differs from the champion's baseline.

    A signal drifts when its two-sample test rejects at ``alpha`` (Bonferroni over the window's signals) *and*
    its effect size reaches ``min_effect`` (KS statistic for continuous signals, Cramér's V for the class mix):
    with a few hundred images a test alone flags differences nobody would act on. A window drifts when any
    signal does; PSI is reported beside each signal for dashboards, it decides nothing.
    """

    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    min_effect: Fraction = 0.20
    psi_bins: Annotated[int, Field(ge=2, le=100)] = 10
    low_confidence: Fraction = 0.5  # a box below this confidence counts as low-confidence
    min_images: PositiveInt = 30  # a window with fewer images is reported "too small", never drifts
    small_object_px: NonNegativeFloat = 20.0  # median box side at the model's input below this -> imgsz advice


class BaselineParams(Section):
    """The champion's own predictions and input statistics, stored with its model version (MLflow artifact)."""

    sets: list[BaselineSet] = Field(default_factory=_default_sets)
    max_images: PositiveInt = 1000  # per set, the first N in name order


class TriggerParams(Section):
    """Drift confirmed in ``confirm_windows`` windows in a row starts a continuous-learning cycle."""

    enabled: bool = True
    confirm_windows: PositiveInt = 2  # k: one noisy window never starts a retrain
    cooldown_hours: NonNegativeFloat = 24.0  # after a trigger, no other one for this long
    deployment: str = "continuous_learning/retrain"  # what run_deployment starts (flow name/deployment name)


class WatchParams(Section):
    """After a promotion: the new champion vs ``previous`` on the same production images and on new holdouts.

    A production window regresses when, paired over the same images, the new champion's mean confidence drops
    by more than ``max_confidence_drop``, its share of images without a detection rises by more than
    ``max_empty_rise``, or its detections per image fall by more than ``max_detections_drop`` (relative), each
    with a paired test at ``alpha``. ``confirm_windows`` regressed windows in a row, or a holdout frozen after the
    promotion whose paired-bootstrap upper bound of (new − previous) mAP50-95 is below ``-max_holdout_loss``,
    roll back (when ``auto_rollback``).
    """

    auto_rollback: bool = True
    windows: PositiveInt = 3  # how many production windows after the promotion are watched
    confirm_windows: PositiveInt = 1
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    max_confidence_drop: NonNegativeFloat = 0.10
    max_empty_rise: Fraction = 0.15
    max_detections_drop: Fraction = 0.30
    max_holdout_loss: NonNegativeFloat = 0.0


class AlertParams(Section):
    """Who hears about it: a webhook (its URL only from the environment variable named here; unset = log only)."""

    webhook_env: str = "VISIONLOOP_ALERT_WEBHOOK"
    events: list[AlertEvent] = Field(default_factory=_default_events)
    labels_deadline_hours: NonNegativeFloat = 48.0  # a cycle waiting for labels longer than this alerts
    timeout_s: Annotated[float, Field(gt=0)] = 10.0


class MetricsParams(Section):
    """The monitor's numbers in Prometheus exposition format: a node-exporter textfile and ``make metrics``."""

    textfile: str = "monitor/visionloop.prom"  # below base.paths.reports
    port: Annotated[int, Field(ge=1024, le=65535)] = 9108  # make metrics serves on 127.0.0.1:port


class MonitorParams(Section):
    """Stage ``monitor``: prediction-log windows vs the champion's baseline, drift → trigger, watch → rollback."""

    alias: str = "champion"
    window: Literal["batch", "day"] = "batch"
    windows: PositiveInt = 30  # the newest N windows are judged and reported
    shadow_iou: Fraction = 0.5  # agreement of champion and shadow boxes
    drift: DriftRules = DriftRules()
    baseline: BaselineParams = BaselineParams()
    trigger: TriggerParams = TriggerParams()
    watch: WatchParams = WatchParams()
    alerts: AlertParams = AlertParams()
    metrics: MetricsParams = MetricsParams()
    experiment: str = "visionloop-monitor"  # MLflow experiment of the monitor's metrics over time
