"""The ingest stage: every refusal reason, the records that pass, duplicates, idempotence, formats, the sampler on an
ingested-only log.

Records are synthetic (``record()``), files are written in ``tmp_path``; the log is real Parquet read back with the
log's own reader.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import ingest, sample
from tasks.config import Params
from tasks.contracts import ingest_rows, monitor_frames
from tasks.contracts import prediction_log as plog
from tasks.contracts.ingest_rows import IngestError, InputRow, Record, Rules
from tasks.contracts.reports import load_report
from tests.conftest import tiny_params_dict
from tests.unit.test_sample import write_image

CLASSES = ("circle", "triangle", "square")
RULES = Rules(classes=CLASSES, default_source="edge", tolerance_px=0.5)
DROP = object()  # a field to leave out of a record


def sha(n: int) -> str:
    return hashlib.sha256(f"image-{n}".encode()).hexdigest()


def record(n: int = 1, **changes: Any) -> dict[str, Any]:
    """A valid record of image ``n`` (64x48, one box), with ``changes`` applied (``DROP`` removes a field)."""
    row: dict[str, Any] = {
        "image_id": f"cam1-{n:05d}",
        "image_uri": f"s3://edge-bucket/cam1/{n:05d}.jpg",
        "image_sha256": sha(n),
        "batch": "edge-2026-12-01",
        "ts": "2026-12-01T10:00:00Z",
        "model_name": "visionloop-detector",
        "model_version": "3",
        "model_alias": "champion",
        "image_width": 64,
        "image_height": 48,
        "latency_ms": 4.5,
        "detections": [{"class_id": 1, "confidence": 0.8, "x1": 2.0, "y1": 3.0, "x2": 30.0, "y2": 40.0}],
    }
    for key, value in changes.items():
        if value is DROP:
            row.pop(key, None)
        else:
            row[key] = value
    return row


def box(**changes: Any) -> list[dict[str, Any]]:
    item: dict[str, Any] = {"class_id": 1, "confidence": 0.8, "x1": 2.0, "y1": 3.0, "x2": 30.0, "y2": 40.0}
    for key, value in changes.items():
        if value is DROP:
            item.pop(key)
        else:
            item[key] = value
    return [item]


STATS = {"brightness": 120.0, "contrast": 30.0, "sharpness": 50.0, "mean_r": 100.0, "mean_g": 110.0, "mean_b": 90.0}

# id -> (record, the field and check of its first reason)
BAD: dict[str, tuple[Any, str, str]] = {
    "not-an-object": ([1, 2], "-", "record"),
    "missing-sha": (record(image_sha256=DROP), "image_sha256", "missing"),
    "sha-upper-hex": (record(image_sha256=sha(1).upper()), "image_sha256", "type"),
    "sha-short": (record(image_sha256="abc"), "image_sha256", "type"),
    "missing-image-uri": (record(image_uri=DROP), "image_uri", "missing"),
    "empty-batch": (record(batch="  "), "batch", "type"),
    "version-not-string": (record(model_version=3), "model_version", "type"),
    "alias-not-string": (record(model_alias=1), "model_alias", "type"),
    "unknown-field": (record(imageid="x"), "imageid", "unknown"),
    "missing-ts": (record(ts=DROP), "ts", "missing"),
    "ts-naive": (record(ts="2026-12-01T10:00:00"), "ts", "type"),
    "ts-not-iso": (record(ts="yesterday"), "ts", "type"),
    "date-not-iso": (record(date="01/12/2026"), "date", "type"),
    "width-zero": (record(image_width=0), "image_width", "range"),
    "width-float": (record(image_width=64.0), "image_width", "type"),
    "height-bool": (record(image_height=True), "image_height", "type"),
    "missing-latency": (record(latency_ms=DROP), "latency_ms", "missing"),
    "latency-negative": (record(latency_ms=-1.0), "latency_ms", "range"),
    "latency-string": (record(latency_ms="4 ms"), "latency_ms", "type"),
    "missing-detections": (record(detections=DROP), "detections", "missing"),
    "detections-not-list": (record(detections={"class_id": 1}), "detections", "type"),
    "detection-not-object": (record(detections=[[1, 2, 3, 4]]), "detections[0]", "type"),
    "detection-unknown-field": (record(detections=box(label="x")), "detections[0].label", "unknown"),
    "class-id-out-of-range": (record(detections=box(class_id=3)), "detections[0].class_id", "class"),
    "class-id-negative": (record(detections=box(class_id=-1)), "detections[0].class_id", "class"),
    "class-name-unknown": (
        record(detections=box(class_id=DROP, class_name="star")),
        "detections[0].class_name",
        "class",
    ),
    "class-name-disagrees": (record(detections=box(class_name="circle")), "detections[0].class_name", "class"),
    "class-missing": (record(detections=box(class_id=DROP)), "detections[0].class_id", "missing"),
    "confidence-above-1": (record(detections=box(confidence=1.5)), "detections[0].confidence", "range"),
    "confidence-missing": (record(detections=box(confidence=DROP)), "detections[0].confidence", "missing"),
    "confidence-string": (record(detections=box(confidence="high")), "detections[0].confidence", "type"),
    "corner-missing": (record(detections=box(y2=DROP)), "detections[0].y2", "missing"),
    "corner-nan": (record(detections=box(x1=float("nan"))), "detections[0].x1", "type"),
    "box-inverted": (record(detections=box(x1=40.0, x2=30.0)), "detections[0]", "box"),
    "box-empty": (record(detections=box(y2=3.0)), "detections[0]", "box"),
    "box-past-right-edge": (record(detections=box(x2=65.0)), "detections[0]", "box"),
    "box-past-bottom-edge": (record(detections=box(y2=48.6)), "detections[0]", "box"),
    "box-negative": (record(detections=box(x1=-1.0)), "detections[0]", "box"),
    "error-unknown-kind": (record(error="oops", detections=[]), "error", "range"),
    "error-with-boxes": (record(error="decode"), "error", "error_record"),
    "error-with-stats": (record(error="inference", detections=None, **STATS), "error", "error_record"),
    "stats-partial": (record(brightness=100.0), "contrast,sharpness,mean_r,mean_g,mean_b", "stats"),
    "stats-out-of-range": (record(**{**STATS, "mean_r": 300.0}), "mean_r", "range"),
    "shadow-not-bool": (record(shadow="yes"), "shadow", "type"),
    "margin-above-1": (record(detections=box(margin=1.5)), "detections[0].margin", "range"),
    "evidence-count-without-max": (record(evidence_count=2), "evidence_count", "evidence"),
    "evidence-max-without-count": (record(evidence_max=0.2), "evidence_count", "evidence"),
    "evidence-count-zero": (record(evidence_max=0.2, evidence_count=0), "evidence_count", "type"),
    "evidence-max-above-1": (record(evidence_max=1.5, evidence_count=1), "evidence_max", "range"),
    "error-with-evidence": (
        record(error="decode", detections=DROP, image_width=0, image_height=0, evidence_max=0.2, evidence_count=1),
        "error",
        "error_record",
    ),
}


@pytest.mark.parametrize(("row", "field", "check"), list(BAD.values()), ids=list(BAD))
def test_a_bad_record_is_refused_naming_its_field_and_line(row, field, check):
    reasons = ingest_rows.check_record(InputRow(line=7, value=row), RULES)
    assert isinstance(reasons, list), "refused"
    assert (reasons[0].field, reasons[0].check) == (field, check), reasons
    assert all(r.line == 7 for r in reasons)


def test_a_parquet_timestamp_without_a_timezone_is_refused_naming_the_fix():
    (reason,) = ingest_rows.check_record(InputRow(line=3, value=record(ts=dt.datetime(2026, 12, 1, 10))), RULES)  # type: ignore[misc]
    assert (reason.field, reason.check) == ("ts", "type") and "tz='UTC'" in reason.message


def test_a_line_that_is_not_json_is_refused_with_its_text():
    (bad,) = ingest_rows.parse_jsonl(b'{"image_id": ', what="x")
    (reason,) = ingest_rows.check_record(bad, RULES)  # type: ignore[misc]
    assert (reason.line, reason.check) == (1, "json") and '{"image_id":' in reason.message


GOOD: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "one-box": (
        record(),
        {"n_detections": 1, "class_name": "triangle", "source": "edge", "date": dt.date(2026, 12, 1)},
    ),
    "no-boxes": (record(detections=[]), {"n_detections": 0, "class_name": None}),
    "class-name-only": (record(detections=box(class_id=DROP, class_name="square")), {"class_id": 2}),
    "class-id-and-name": (record(detections=box(class_name="triangle")), {"class_id": 1}),
    "box-within-tolerance": (record(detections=box(x2=64.3)), {"x2": pytest.approx(64.3), "x2n": 1.0}),
    "error-record": (record(error="decode", detections=DROP, image_width=0, image_height=0), {"error": "decode"}),
    "date-and-source-given": (
        record(date="2026-11-30", source="cam1"),
        {"date": dt.date(2026, 11, 30), "source": "cam1"},
    ),
    "ts-offset-to-utc": (record(ts="2026-12-01T01:30:00+02:00"), {"date": dt.date(2026, 11, 30)}),
    "no-alias": (record(model_alias=None), {"model_alias": None}),
    "stats": (record(**STATS), {"brightness": 120.0, "mean_b": 90.0}),
    "shadow": (record(shadow=True, model_alias="challenger"), {"shadow": True}),
    "margin-and-evidence": (
        record(detections=box(margin=0.25), evidence_max=0.125, evidence_count=2),
        {"margin": 0.25, "evidence_max": 0.125, "evidence_count": 2},
    ),
    "no-evidence-given": (record(), {"margin": None, "evidence_max": None, "evidence_count": 0}),
}


@pytest.mark.parametrize(("row", "expected"), list(GOOD.values()), ids=list(GOOD))
def test_a_good_record_becomes_log_rows(row, expected):
    checked = ingest_rows.check_record(InputRow(line=1, value=row), RULES)
    assert isinstance(checked, Record), checked
    (logged,) = ingest_rows.to_table([checked], classes=CLASSES).to_pylist()
    for key, value in expected.items():
        assert logged[key] == value, key
    assert logged["ts"] == dt.datetime.fromisoformat(row["ts"]).astimezone(dt.UTC)


# ------------------------------------------------------------------------------------------------ the stage


@pytest.fixture
def params(tmp_path: Path) -> Params:
    data = tiny_params_dict(tmp_path)
    data["ingest"].update(default_source="edge")
    params = Params.model_validate(data)
    assert tuple(params.base.classes[:3]) == CLASSES  # the records' class ids mean the same in the stage
    return params


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def log_rows(params: Params) -> list[dict[str, Any]]:
    return plog.read(params.base.paths.predictions).to_pylist()


def test_good_rows_are_appended_and_bad_ones_quarantined_with_reasons(params, tmp_path):
    rows = [record(1), record(2, detections=box(confidence=2.0)), record(3, detections=[]), "not a record"]
    report = ingest.run(params, path=write_jsonl(tmp_path / "in.jsonl", rows))
    assert (report.records, report.added_images, report.added_rows, report.quarantined) == (4, 2, 2, 2)
    assert {r["image_id"] for r in log_rows(params)} == {"cam1-00001", "cam1-00003"}
    (part,) = report.parts
    assert Path(part).name == f"ingest={report.ingest_id}.parquet" and Path(part).parent.name == "date=2026-12-01"
    quarantined = [json.loads(line) for line in Path(report.quarantine_file or "").read_text().splitlines()]
    assert [q["line"] for q in quarantined] == [2, 4]
    assert quarantined[0]["reasons"][0]["field"] == "detections[0].confidence"
    assert quarantined[0]["row"]["image_id"] == "cam1-00002"
    assert Path(report.quarantine_file or "").parent == params.base.paths.quarantine / "ingest"
    assert report.reasons == {"range detections[].confidence": 1, "record -": 1}
    assert load_report(params.base.paths.reports, "ingest") == report


def test_ingesting_the_same_rows_twice_adds_nothing_whatever_the_format(params, tmp_path):
    rows = [record(1), record(2, detections=[]), record(3, detections=box(class_id=DROP, class_name="circle"))]
    first = ingest.run(params, path=write_jsonl(tmp_path / "in.jsonl", rows))
    before = log_rows(params)
    again = ingest.run(params, path=write_jsonl(tmp_path / "copy.jsonl", rows))
    as_json = tmp_path / "in.json"
    as_json.write_text(json.dumps(rows, indent=2))
    third = ingest.run(params, path=as_json)
    assert first.added_images == 3 and not first.already_ingested
    for report in (again, third):
        assert report.ingest_id == first.ingest_id
        assert (report.already_ingested, report.added_images, report.quarantined) == (True, 0, 0)
    assert log_rows(params) == before


def test_a_parquet_input_of_the_same_records_reads_like_jsonl(params, tmp_path):
    rows = [record(1), record(2, detections=[]), record(3, error="timeout", detections=[])]
    report = ingest.run(params, path=write_parquet(tmp_path / "in.parquet", rows))
    assert (report.format, report.added_images, report.quarantined) == ("parquet", 3, 0)
    assert [r["n_detections"] for r in log_rows(params)] == [1, 0, 0]


def test_duplicates_in_the_input_and_of_the_log_are_refused(params, tmp_path):
    ingest.run(params, path=write_jsonl(tmp_path / "a.jsonl", [record(1)]))
    rows = [record(1, batch="other"), record(2), record(2, image_id="again")]
    report = ingest.run(params, path=write_jsonl(tmp_path / "b.jsonl", rows))
    assert (report.added_images, report.quarantined, report.duplicates) == (1, 2, 2)
    assert report.reasons == {"duplicate_in_log image_sha256": 1, "duplicate_in_input image_sha256": 1}
    assert "line 2" in report.examples[1].message
    # another model version (or the same version in shadow) predicting the same image is no duplicate
    other = [record(1, model_version="4"), record(1, shadow=True, model_alias="challenger")]
    assert ingest.run(params, path=write_jsonl(tmp_path / "c.jsonl", other)).added_images == 2


def test_an_ingest_interrupted_between_two_dates_is_completed_by_running_it_again(params, tmp_path):
    rows = [record(1), record(2, date="2026-12-02")]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    first = ingest.run(params, path=path)
    assert len(first.parts) == 2
    Path(first.parts[1]).unlink()  # as if the process died after the first date's part
    again = ingest.run(params, path=path)
    assert (again.already_ingested, again.added_images, again.quarantined) == (False, 2, 0)
    assert sorted(r["image_id"] for r in log_rows(params)) == ["cam1-00001", "cam1-00002"]


EMPTY: dict[str, str] = {"empty-file": "", "blank-lines": "\n\n  \n"}


@pytest.mark.parametrize("text", list(EMPTY.values()), ids=list(EMPTY))
def test_an_empty_input_adds_nothing(params, tmp_path, text):
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    report = ingest.run(params, path=path)
    assert (report.records, report.added_images, report.parts, report.quarantine_file) == (0, 0, [], None)
    assert log_rows(params) == []


BAD_FILES: dict[str, tuple[str, bytes, str]] = {
    "unknown-suffix": ("in.csv", b"a,b\n", "not an accepted ingest input"),
    "json-not-array": ("in.json", b'"text"', "expected a JSON array"),
    "json-broken": ("in.json", b"[{", "not JSON"),
    "parquet-broken": ("in.parquet", b"PAR1 nope", "not a readable Parquet file"),
}


@pytest.mark.parametrize(("name", "data", "message"), list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_an_unreadable_input_is_refused_whole_and_nothing_is_written(params, tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IngestError, match=message):
        ingest.run(params, path=path)
    assert not params.base.paths.predictions.exists()


def test_a_format_left_out_of_ingest_formats_is_refused(tmp_path):
    data = tiny_params_dict(tmp_path)
    data["ingest"]["formats"] = ["parquet"]
    with pytest.raises(IngestError, match=r"\.parquet \(parquet\)"):
        ingest.run(Params.model_validate(data), path=write_jsonl(tmp_path / "in.jsonl", [record()]))


def test_the_sampler_selects_from_a_log_of_ingested_rows_only(params, tmp_path):
    images = [write_image(tmp_path / "edge" / f"cam1-{n:05d}.png", n) for n in range(1, 21)]
    rows = [
        record(
            n,
            image_uri=path.resolve().as_uri(),  # the sampler opens it for its near-duplicate check
            image_sha256=plog.sha256_file(path),
            image_width=64,
            image_height=64,
            detections=box(confidence=0.15 + 0.02 * n),
            ts=f"2026-12-01T10:{n:02d}:00Z",
        )
        for n, path in enumerate(images, start=1)
    ]
    ingest.run(params, path=write_jsonl(tmp_path / "in.jsonl", rows))
    data = copy.deepcopy(params.model_dump(mode="json"))
    data["sample"].update(budget=5, max_per_day=None)
    data["sample"]["strategies"] = {name: None for name in data["sample"]["strategies"]}
    data["sample"]["strategies"]["low_confidence"] = {"weight": 1.0, "budget": 5, "band": [0.1, 0.5]}
    result = sample.run(Params.model_validate(data), cycle="c1")
    assert result.selected == 5, result.reason
    manifest = pq.read_table(params.base.paths.samples / "c1" / "manifest.parquet").to_pylist()
    assert {row["image_uri"] for row in manifest} <= {row["image_uri"] for row in rows}


def test_the_monitor_frames_of_an_ingested_log_hold_every_image_of_the_champion(params, tmp_path):
    rows = [record(n, source="cam1", **STATS) for n in range(1, 6)] + [
        record(6, error="unreadable", detections=[], image_width=0, image_height=0, image_sha256=plog.EMPTY_SHA256),
        record(7, shadow=True, model_alias="challenger", model_version="4"),
    ]
    ingest.run(params, path=write_jsonl(tmp_path / "in.jsonl", rows))
    table = plog.read(params.base.paths.predictions)
    fr = monitor_frames.frames(table, imgsz=params.base.imgsz, low_confidence=0.5)
    assert fr.problems == [] and fr.stats_logged
    champion = monitor_frames.select(fr, model_version="3", model_alias="champion")
    assert champion.images.height == 6 and champion.boxes.height == 5
    assert champion.images["error"].to_list().count("unreadable") == 1
    assert monitor_frames.select(fr, model_alias="challenger").images.height == 1
