"""The cost maths of a cycle (tasks/decisions/cost.py), the store-size snapshot and the ``cycle.cost`` params."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from tasks import cycle
from tasks.config import ConfigError, CostParams, load_params
from tasks.contracts.reports.cost import folder_bytes, measure_stores, store_paths
from tasks.contracts.reports.export import ArtifactCheck, ExportReport, SpeedResult
from tasks.decisions import cost
from tasks.env import PROJECT_ROOT

NO_PRICES = CostParams()
PRICES = CostParams(
    currency="EUR", label_price_per_image=0.5, instance_price_per_hour=3.6, storage_price_per_gb_month=0.02
)


def export_record(*, selected: str | None = "onnx_int8", speed: bool = True, ips: float = 1000.0) -> ExportReport:
    """An export stage's record: FP32 ONNX and its INT8 sibling (twice as fast), the INT8 one selected."""

    def check(target: str, throughput: float) -> ArtifactCheck:
        timing = SpeedResult(
            2, True, {"p50": 1.5, "p95": 2.0, "p99": 2.5, "mean": 1.6}, 8, 9.0, throughput, 5, 0.1, 5, 1
        )
        return ArtifactCheck(
            target=target,
            path=f"models/export/{target}",
            size_mb=1.0,
            map50_95={"golden": 0.5},
            reference_map50_95={"golden": 0.5},
            max_drop=0.005,
            passed=True,
            speed=timing if speed else None,
        )

    return ExportReport(
        weights="models/train/best.pt",
        params_digest="d",
        reference_map50_95={"golden": 0.5},
        artifacts=[check("onnx", ips / 2), check("onnx_int8", ips)],
        selected={"target": selected, "path": f"models/export/{selected}", "reason": "fastest"} if selected else None,
        selection={},
        lineage={},
        host={},
    )


def export_report(**kwargs) -> dict:
    """:func:`export_record` as JSON, as the cycle stage reads it back."""
    return json.loads(json.dumps(asdict(export_record(**kwargs))))


# ------------------------------------------------------------------------------------------------ priced


@pytest.mark.parametrize(
    ("quantity", "price", "expected"),
    [
        pytest.param(120, 0.5, 60.0, id="labels-times-price"),
        pytest.param(120, None, None, id="no-price-set"),
        pytest.param(None, 0.5, None, id="quantity-unknown"),
        pytest.param(0, 0.5, 0.0, id="zero-labels"),
        pytest.param(10, 0.0, 0.0, id="free"),
    ],
)
def test_priced(quantity, price, expected):
    assert cost.priced(quantity, price, key="label_price_per_image") == expected


def test_a_negative_price_is_an_error_naming_its_key():
    with pytest.raises(
        cost.CostError, match=r"cycle\.cost\.instance_price_per_hour = -1.0: a price cannot be negative"
    ):
        cost.priced(1.0, -1.0, key="instance_price_per_hour")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("label_price_per_image", -0.01, id="negative-label-price"),
        pytest.param("instance_price_per_hour", -3, id="negative-instance-price"),
        pytest.param("storage_price_per_gb_month", "cheap", id="not-a-number"),
        pytest.param("currency", "", id="empty-currency"),
        pytest.param("label_price", 1.0, id="unknown-key"),
    ],
)
def test_a_bad_cost_param_fails_loading_naming_its_path(tmp_path, key, value):
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data["cycle"]["cost"][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert f"  cycle.cost.{key}:" in str(err.value)


def test_the_project_sets_no_price():
    prices = load_params(PROJECT_ROOT / "params.yaml").cycle.cost
    assert (prices.label_price_per_image, prices.instance_price_per_hour, prices.storage_price_per_gb_month) == (
        None,
        None,
        None,
    )


# ------------------------------------------------------------------------------------------------ compute


@pytest.mark.parametrize(
    ("stages", "wall", "missing"),
    [
        pytest.param({}, {}, dict.fromkeys(cost.COST_STAGES, cost.NO_REPORT), id="no-reports"),
        pytest.param(
            {name: {"wall_s": 10.0} for name in cost.COST_STAGES},
            dict.fromkeys(cost.COST_STAGES, 10.0),
            {},
            id="every-stage-timed",
        ),
        pytest.param(
            {"train": {"wall_s": 300}, "promote": {"action": "promote"}, "gate": {"wall_s": None}},
            {"train": 300.0},
            {n: cost.NO_REPORT for n in cost.COST_STAGES if n not in ("train", "promote", "gate")}
            | {"promote": cost.NO_WALL, "gate": cost.NO_WALL},
            id="report-without-wall_s",
        ),
        pytest.param(
            {"label": {"wall_s": True}, "merge": {"wall_s": -1.0}, "sample": {"wall_s": 0.0}},
            {"sample": 0.0},
            {n: cost.NO_REPORT for n in cost.COST_STAGES if n not in ("label", "merge", "sample")}
            | {"label": cost.NO_WALL, "merge": cost.NO_WALL},
            id="not-a-time",
        ),
    ],
)
def test_stage_times(stages, wall, missing):
    assert cost.stage_times(stages) == (wall, missing)


# ------------------------------------------------------------------------------------------------ storage


@pytest.mark.parametrize(
    ("opened", "now", "added", "groups"),
    [
        pytest.param(
            None,
            {"labels": 10, "models": 5},
            None,
            dict.fromkeys(cost.STORE_GROUPS),
            id="no-snapshot-at-opening",
        ),
        pytest.param(
            {"labels": 10, "merged": 0, "models": 5, "predictions": 7, "mlflow": 0, "mlflow_db": 100},
            {"labels": 110, "merged": 900, "models": 1005, "predictions": 17, "mlflow": 30, "mlflow_db": 150},
            {"labels": 100, "merged": 900, "models": 1000, "predictions": 10, "mlflow": 30, "mlflow_db": 50},
            {"data": 1000, "models": 1000, "logs": 10, "mlflow": 80},
            id="grew",
        ),
        pytest.param(
            {"models": 1000, "mlflow": None},
            {"models": 400, "mlflow": None},
            {"models": -600, "mlflow": None},
            {"data": None, "models": -600, "logs": None, "mlflow": None},
            id="freed-and-unmeasured",
        ),
        pytest.param({}, {"labels": 3}, {"labels": None}, dict.fromkeys(cost.STORE_GROUPS), id="store-new-since"),
    ],
)
def test_storage_added_and_groups(opened, now, added, groups):
    assert cost.storage_added(opened, now) == added
    assert cost.group_bytes(added) == groups


def test_folder_bytes_counts_regular_files_only(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 1000)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"2" * 24)
    os.symlink(tmp_path / "a" / "x.bin", tmp_path / "a" / "link.bin")  # a link is not stored twice
    assert folder_bytes(tmp_path / "a") == 1024
    assert folder_bytes(tmp_path / "a" / "x.bin") == 1000
    assert folder_bytes(tmp_path / "missing") == 0
    assert measure_stores({"labels": tmp_path / "a", "mlflow": None}) == {"labels": 1024, "mlflow": None}


@pytest.mark.parametrize(
    ("uri", "mlflow", "database"),
    [
        pytest.param("sqlite:///m/mlflow.db", "artifact_root", Path("m/mlflow.db"), id="local-sqlite-store"),
        pytest.param("sqlite:////srv/mlflow.db", "artifact_root", Path("/srv/mlflow.db"), id="absolute-sqlite-path"),
        pytest.param("file:///srv/mlruns", Path("/srv/mlruns"), None, id="file-store"),
        pytest.param("http://127.0.0.1:5000", None, None, id="server-not-measured"),
    ],
)
def test_the_mlflow_store_is_measured_only_when_local(tiny_params, uri, mlflow, database):
    stores = store_paths(tiny_params, log=Path("log"), mlflow_uri=uri)
    expected = tiny_params.registry.artifact_root if mlflow == "artifact_root" else mlflow
    assert (stores["mlflow"], stores["mlflow_db"]) == (expected, database) and stores["predictions"] == Path("log")


def test_an_s3_prediction_log_is_not_measured(tiny_params):
    """Its local folder is only a read-through mirror: its size says nothing about the log's."""
    base = tiny_params.base.model_copy(
        update={"storage": tiny_params.base.storage.model_copy(update={"predictions": "s3://bucket/log"})}
    )
    on_s3 = tiny_params.model_copy(update={"base": base})
    assert cycle.store_sizes(on_s3)["predictions"] is None  # and no S3 call was made to say so
    assert cycle.store_sizes(tiny_params)["predictions"] == 0


# ------------------------------------------------------------------------------------------------ inference


@pytest.mark.parametrize(
    ("export", "price", "artifact", "seconds", "per_1k"),
    [
        pytest.param(None, 3.6, None, None, None, id="no-export-report"),
        pytest.param(export_record(selected=None), 3.6, None, None, None, id="nothing-selected"),
        pytest.param(export_record(speed=False), 3.6, "onnx_int8", None, None, id="not-timed"),
        pytest.param(export_record(ips=0.0), 3.6, "onnx_int8", None, None, id="zero-throughput"),
        pytest.param(export_record(), None, "onnx_int8", 1.0, None, id="no-price-set"),
        pytest.param(export_record(), 3.6, "onnx_int8", 1.0, 0.001, id="1000-ips-at-3.6-per-hour"),
        pytest.param(export_record(ips=250.0), 7.2, "onnx_int8", 4.0, 0.008, id="250-ips-at-7.2-per-hour"),
    ],
)
def test_inference_cost_of_the_selected_artifact(export, price, artifact, seconds, per_1k):
    got = cost.inference_cost(export, price)
    assert (got.artifact, got.instance_s_per_1k, got.cost_per_1k) == (artifact, seconds, per_1k)
    if seconds is not None:  # the selected artifact's figures, not its FP32 sibling's
        assert (got.batch, got.threads, got.latency_p50_ms) == (8, 2, 1.5)


# ------------------------------------------------------------------------------------------------ the record


TIMED = {
    "predict": {"wall_s": 26.0},
    "sample": {"wall_s": 4.0},
    "label": {"wall_s": 20.0, "labeled": 120},
    "train": {"wall_s": 3000.0},
    "evaluate": {"wall_s": 40.0},
    "export": export_report(),
    "gate": {"wall_s": 60.0},
    "promote": {"action": "promote"},
}
OPENED = {"labels": 0, "merged": 1_000_000, "models": 10_000_000, "predictions": 0, "mlflow": 0}
NOW = {"labels": 2_000_000, "merged": 3_000_000, "models": 30_000_000, "predictions": 500_000, "mlflow": None}


@pytest.mark.parametrize(
    ("stages", "opened", "prices", "expected"),
    [
        pytest.param(
            TIMED,
            OPENED,
            NO_PRICES,
            {"hours": 0.875, "compute": None, "labels": (120, None), "storage": (24_500_000, None), "total": None},
            id="null-prices",
        ),
        pytest.param(
            TIMED,
            OPENED,
            PRICES,
            {"hours": 0.875, "compute": 3.15, "labels": (120, 60.0), "storage": (24_500_000, 0.00049), "total": 63.15},
            id="priced",
        ),
        pytest.param(
            TIMED | {"label": {"wall_s": 20.0, "labeled": 0}},
            OPENED,
            PRICES,
            {"hours": 0.875, "compute": 3.15, "labels": (0, 0.0), "storage": (24_500_000, 0.00049), "total": 3.15},
            id="zero-labels",
        ),
        pytest.param(
            {},
            None,
            PRICES,
            {"hours": 0.0, "compute": 0.0, "labels": (None, None), "storage": (None, None), "total": None},
            id="no-stage-reports-no-snapshot",
        ),
    ],
)
def test_price_cycle(stages, opened, prices, expected):
    got = cost.price_cycle(cycle="c1", stages=stages, opened=opened, now=NOW, prices=prices)
    assert got.compute.hours == expected["hours"] and got.compute.cost == expected["compute"]
    assert (got.labels.images, got.labels.cost) == expected["labels"]
    assert (got.storage.total, got.storage.cost_per_month) == expected["storage"]
    assert got.total == expected["total"] and got.currency == prices.currency
    assert set(got.compute.wall_s) | set(got.compute.missing) == set(cost.COST_STAGES)


@pytest.mark.parametrize(
    ("stages", "opened", "now", "said"),
    [
        pytest.param(
            {},
            None,
            {"labels": 0, "predictions": None, "mlflow": None},
            ["no store sizes", "prediction log is on S3", "MLflow store is a server", "no label report", "no export"],
            id="nothing-to-go-on",
        ),
        pytest.param(
            TIMED | {"export": export_report(selected=None)},
            OPENED,
            NOW | {"mlflow": 5},
            ["selected no artifact"],
            id="no-artifact",
        ),
        pytest.param(
            TIMED | {"export": export_report(speed=False)},
            OPENED,
            NOW | {"mlflow": 5},
            ["was not timed"],
            id="not-timed",
        ),
        pytest.param(TIMED, OPENED, NOW | {"mlflow": 5}, [], id="all-measured"),
    ],
)
def test_the_notes_say_what_was_not_measured(stages, opened, now, said):
    notes = cost.price_cycle(cycle="c1", stages=stages, opened=opened, now=now, prices=NO_PRICES).notes
    assert len(notes) == len(said) and all(any(phrase in note for note in notes) for phrase in said), notes


def test_price_cycle_refuses_a_negative_price_it_is_handed():
    bad = CostParams.model_construct(currency="USD", label_price_per_image=-1.0)  # bypasses validation on purpose
    with pytest.raises(cost.CostError, match=r"cycle\.cost\.label_price_per_image"):
        cost.price_cycle(cycle="c1", stages=TIMED, opened=OPENED, now=NOW, prices=bad)


@pytest.mark.parametrize(
    ("stages", "opened", "prices", "contains", "absent"),
    [
        pytest.param(
            TIMED,
            OPENED,
            NO_PRICES,
            [
                "compute 0.875 h (3150 s, 6 stages), not timed: validate, merge, registry (no report); "
                "export, promote (no wall_s)",
                "storage +24.5 MB (data +4.0 MB, models +20.0 MB, logs +500.0 kB, mlflow not measured)",
                "120 labels;",
                "1 k inferences 1.00 instance-s (onnx_int8, 1000 img/s network only)",
                "; no price set",
            ],
            ["=", "total"],
            id="no-price-set",
        ),
        pytest.param(
            TIMED,
            OPENED,
            PRICES,
            [
                "compute 0.875 h (3150 s, 6 stages) = 3.15 EUR",
                "storage +24.5 MB = 0.00049 EUR/month",
                "120 labels = 60.00 EUR",
                "1 k inferences 1.00 instance-s = 0.001 EUR",
                "cycle total 63.15 EUR (labels + compute)",
            ],
            ["no price set"],
            id="priced",
        ),
        pytest.param(
            TIMED,
            OPENED,
            CostParams(label_price_per_image=0.1),
            ["120 labels = 12.00 USD", "no price set for instance_price_per_hour, storage_price_per_gb_month"],
            ["total"],
            id="some-prices",
        ),
        pytest.param(
            {},
            None,
            NO_PRICES,
            ["compute not timed, not timed: predict", "storage added unknown", "no price set"],
            ["labels", "inferences"],
            id="nothing-measured",
        ),
    ],
)
def test_cost_line(stages, opened, prices, contains, absent):
    line = cost.cost_line(cost.price_cycle(cycle="c1", stages=stages, opened=opened, now=NOW, prices=prices))
    for text in contains:
        assert text in line
    for text in absent:
        assert text not in line


# ------------------------------------------------------------------------------------------------ cycle state


def test_a_new_cycle_records_the_store_sizes_and_keeps_them_to_the_end(tiny_params):
    (tiny_params.base.paths.labels / "old").mkdir(parents=True)
    (tiny_params.base.paths.labels / "old" / "a.txt").write_bytes(b"x" * 300)
    opened = cycle.start(tiny_params, cycle="c1")
    assert opened.sizes is not None and opened.sizes["labels"] == 300 and set(opened.sizes) >= {"models", "mlflow"}
    (tiny_params.base.paths.labels / "old" / "b.txt").write_bytes(b"x" * 5)
    waiting = cycle.finish(tiny_params, opened, status="waiting", outcome="waiting for labels")
    resumed = cycle.start(tiny_params, cycle="c1")
    closed = cycle.finish(tiny_params, resumed, status="closed", outcome="promote")
    assert waiting.sizes == resumed.sizes == closed.sizes == opened.sizes  # the opening snapshot, not a later one
    assert cycle.read_state(tiny_params, "c1") == closed


def test_a_state_written_before_sizes_is_read_and_its_report_says_storage_unknown(tiny_params):
    path = cycle.state_path(tiny_params, "c0")
    path.parent.mkdir(parents=True)
    old = {"cycle": "c0", "status": "waiting", "started_at": "2026-11-01T00:00:00+00:00"}
    path.write_text(json.dumps(old | {"updated_at": old["started_at"], "runs": 1, "outcome": None, "resumed": False}))
    assert cycle.read_state(tiny_params, "c0").sizes is None
    assert cycle.start(tiny_params, cycle="c0").sizes is None  # continued: still no snapshot, none made up
    report = cycle.run(tiny_params, cycle="c0", outcome="waiting for labels")
    saved = json.loads((Path(report.folder) / "cost.json").read_text())
    assert saved["storage"]["opened"] is None and saved["storage"]["total"] is None
    assert any("no store sizes" in note for note in saved["notes"])
    assert "| cost | compute not timed" in report.markdown and "storage added unknown" in report.markdown
