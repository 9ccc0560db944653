"""``reports/monitor.json``: windows of the prediction log judged against the champion's baseline, the retrain
trigger, the watch over a fresh promotion, and the shadow's agreement with the champion.

The monitor stage writes a :class:`MonitorReport` with :func:`tasks.contracts.reports.write_report`; the sample
stage reads ``flagged_batches`` from the JSON (its ``drift`` strategy), the monitor flow reads ``trigger`` and
``watch``. The records below are also what :mod:`tasks.decisions.monitoring` returns, so the report holds exactly
what was decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Side = Literal["output", "input"]


@dataclass(frozen=True)
class Signal:
    """One signal of one window vs the baseline.

    Attributes:
        name: e.g. ``confidence``, ``detections_per_image``, ``class_mix``, ``box_size``, ``low_conf_share``,
            ``empty_share``, ``brightness``, ``contrast``, ``sharpness``, ``mean_r`` ...
        side: ``output`` (what the model answered) or ``input`` (the images' statistics).
        test: ``ks`` (two-sample Kolmogorov-Smirnov), ``chi2`` (contingency), ``binomial``/``proportion`` ...
        statistic, p_value: the test's statistic and p-value (``None`` when not available).
        effect: the effect size the rule reads (KS statistic, Cramér's V, difference of shares ...).
        psi: population stability index (reported, decides nothing).
        baseline, window: the signal's summary (mean or share) in the baseline and in the window.
        drifted: the rule fired (test rejects at the corrected alpha and effect >= min_effect).
        available: False when the window (or the baseline) lacks the data, e.g. a log written before input
            statistics existed; ``note`` says why.
    """

    name: str
    side: Side
    test: str
    statistic: float | None = None
    p_value: float | None = None
    effect: float | None = None
    psi: float | None = None
    baseline: float | None = None
    window: float | None = None
    drifted: bool = False
    available: bool = True
    note: str = ""


@dataclass(frozen=True)
class Agreement:
    """Champion vs shadow on the images both predicted (one window)."""

    shadow_version: str
    images: int
    matched_box_rate: float | None  # share of the champion's boxes matched by a shadow box at monitor.shadow_iou
    class_agreement: float | None  # share of matched pairs with the same class
    count_difference: float | None  # mean |n_shadow - n_champion| per image
    latency_ratio: float | None  # shadow / champion median ms per image


@dataclass(frozen=True)
class Window:
    """One window (a batch, or a day) of the champion's log rows, optionally one source of it.

    ``drifted`` is any signal drifting; ``output_drifted`` / ``input_drifted`` per side. ``too_small``: fewer
    images than ``monitor.drift.min_images`` (never drifts). ``errors``: rows with an error kind, counted by kind.
    ``problems``: bad rows found and left out (NaN confidences, negative latencies ...), one line each.
    """

    key: str  # the batch name or the ISO date
    date: str
    source: str | None  # None: all sources together
    images: int
    boxes: int
    batches: list[str] = field(default_factory=list)
    drifted: bool = False
    output_drifted: bool = False
    input_drifted: bool = False
    too_small: bool = False
    signals: list[Signal] = field(default_factory=list)
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p95, p99
    errors: dict[str, int] = field(default_factory=dict)
    agreement: Agreement | None = None
    advice: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Trigger:
    """The decision to start a continuous-learning cycle (a pure function of windows and state).

    ``fire``: start one now; ``confirmed``: drift confirmed in k consecutive windows (may not fire because of the
    cool-down or an open cycle; ``reason`` says which). ``batches``: the drifted batches to flag. ``started``: the
    flow run that was created (filled in by the flow), ``error``: why starting failed (retried next run).
    """

    fire: bool
    confirmed: bool
    reason: str
    batches: list[str] = field(default_factory=list)
    started: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class WatchWindow:
    """New champion vs previous on the same images of one window (paired), or on one fresh holdout."""

    key: str
    kind: Literal["production", "holdout"]
    images: int
    regressed: bool
    numbers: dict[str, float | None] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Watch:
    """The watch over the newest promotion: does the new champion regress against ``previous``?"""

    new_version: str
    previous_version: str
    promoted_at: str
    windows: list[WatchWindow] = field(default_factory=list)
    regressed: bool = False
    expired: bool = False  # more than monitor.watch.windows windows since the promotion: nothing is judged now
    reason: str = ""
    rolled_back: bool = False  # filled in when the rollback ran
    rollback_error: str | None = None


@dataclass(frozen=True)
class MonitorReport:
    """What ``reports/monitor.json`` holds.

    Attributes:
        model_name, model_version, alias: the champion whose log rows were judged.
        baseline: where the baseline came from (``artifact`` or ``computed``), its images and sets.
        windows: every judged window, oldest first (all sources together), then ``by_source``.
        flagged_batches: batches of drifted windows (the ``drift`` sampling strategy reads this).
        drift_confirmed: drift in ``monitor.trigger.confirm_windows`` windows in a row.
        trigger: the retrain decision; watch: the post-promotion watch (``None``: no promotion to watch).
        input_side: ``available`` or why not (e.g. a log written before input statistics).
        textfile: the Prometheus textfile written.
    """

    model_name: str
    model_version: str
    alias: str
    baseline: dict[str, str | int | list[str]]
    windows: list[Window] = field(default_factory=list)
    by_source: list[Window] = field(default_factory=list)
    flagged_batches: list[str] = field(default_factory=list)
    drift_confirmed: bool = False
    trigger: Trigger | None = None
    watch: Watch | None = None
    input_side: str = "available"
    textfile: str = ""
    plots: list[str] = field(default_factory=list)
    wall_s: float = 0.0
