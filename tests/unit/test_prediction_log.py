"""Unit tests for tasks.contracts.prediction_log: table building, atomic partitioned writes, validated reads."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.contracts import prediction_log as plog
from tasks.contracts import prediction_schema
from tasks.contracts.prediction_log import ImageDetections, LoggedBatch, PredictionLogError

CLASSES = ["circle", "square", "triangle"]
DAY1 = dt.date(2026, 11, 2)
DAY2 = dt.date(2026, 11, 3)
TS = dt.datetime(2026, 11, 2, 12, 30, tzinfo=dt.UTC)
PART = "batch=2026-11-02__model=visionloop-detector-v3"
BOX_COLUMNS = ["class_id", "class_name", "confidence", "x1", "y1", "x2", "y2", "x1n", "y1n", "x2n", "y2n"]


def make_record(
    image_id: str, n_boxes: int, *, width: int = 200, height: int = 100, boxes: list[list[float]] | None = None
) -> ImageDetections:
    """Synthetic detector output: ``n_boxes`` boxes inside a ``width`` x ``height`` image."""
    if boxes is None:
        boxes = [[10.0 * i, 5.0 * i, 10.0 * i + 50, 5.0 * i + 40] for i in range(n_boxes)]
    return ImageDetections(
        image_id=image_id,
        image_uri=f"file:///data/production/{image_id}.jpg",
        image_sha256=hashlib.sha256(image_id.encode()).hexdigest(),
        width=width,
        height=height,
        latency_ms=12.5,
        boxes_xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        confidence=np.linspace(0.9, 0.5, n_boxes),
        class_id=np.arange(n_boxes) % len(CLASSES),
    )


def make_table(
    records: list[ImageDetections],
    *,
    batch: str = "2026-11-02",
    date: dt.date = DAY1,
    model_version: str = "3",
    model_alias: str | None = "champion",
    ts: dt.datetime | None = TS,
) -> pa.Table:
    return plog.rows_to_table(
        records,
        batch=batch,
        date=date,
        model_name="visionloop-detector",
        model_version=model_version,
        model_alias=model_alias,
        class_names=CLASSES,
        ts=ts,
    )


@pytest.fixture
def two_day_table() -> pa.Table:
    day1 = make_table([make_record("a", 2), make_record("b", 0)], date=DAY1)
    day2 = make_table([make_record("c", 3)], batch="2026-11-03", date=DAY2)
    return pa.concat_tables([day1, day2])


# rows_to_table ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes_per_image", "n_rows", "n_null_rows"),
    [
        pytest.param([], 0, 0, id="no-images"),
        pytest.param([0], 1, 1, id="one-empty-image"),
        pytest.param([0, 0, 0], 3, 3, id="all-images-empty"),
        pytest.param([2], 2, 0, id="one-image-two-boxes"),
        pytest.param([2, 0, 3], 6, 1, id="mixed"),
    ],
)
def test_rows_to_table_row_counts(boxes_per_image: list[int], n_rows: int, n_null_rows: int) -> None:
    records = [make_record(f"img{i}", n) for i, n in enumerate(boxes_per_image)]
    table = make_table(records)
    assert table.schema == plog.SCHEMA
    assert table.num_rows == n_rows
    assert table["class_id"].null_count == n_null_rows
    expected_n = [n for n in boxes_per_image for _ in range(max(n, 1))]
    assert table["n_detections"].to_pylist() == expected_n
    assert table["image_id"].to_pylist() == [f"img{i}" for i, n in enumerate(boxes_per_image) for _ in range(max(n, 1))]


def test_rows_to_table_zero_box_image_is_one_null_row() -> None:
    table = make_table([make_record("a", 1), make_record("empty", 0, width=64, height=32)])
    row = table.filter(pc.equal(table["image_id"], "empty")).to_pylist()
    assert len(row) == 1
    assert all(row[0][name] is None for name in BOX_COLUMNS)
    assert row[0]["n_detections"] == 0
    assert (row[0]["image_width"], row[0]["image_height"]) == (64, 32)
    assert row[0]["image_sha256"] == hashlib.sha256(b"empty").hexdigest()
    assert row[0]["latency_ms"] == pytest.approx(12.5)


def test_rows_to_table_box_values_and_constants() -> None:
    record = make_record("a", 3)
    ts = dt.datetime(2026, 11, 2, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    table = make_table([record], model_alias=None, ts=ts)
    np.testing.assert_allclose(table["confidence"].to_numpy(), record.confidence, rtol=1e-6)
    assert table["class_id"].to_pylist() == [0, 1, 2]
    assert table["class_name"].to_pylist() == CLASSES
    for i, name in enumerate(("x1", "y1", "x2", "y2")):
        np.testing.assert_array_equal(table[name].to_numpy(), record.boxes_xyxy[:, i])
    assert set(table["batch"].to_pylist()) == {"2026-11-02"}
    assert set(table["date"].to_pylist()) == {DAY1}
    assert set(table["ts"].to_pylist()) == {dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)}
    assert table["model_alias"].null_count == 3


@pytest.mark.parametrize(
    ("box", "expected_n"),
    [
        pytest.param([20, 10, 100, 50], [0.1, 0.1, 0.5, 0.5], id="inside"),
        pytest.param([0, 0, 200, 100], [0.0, 0.0, 1.0, 1.0], id="full-image"),
        pytest.param([-10, -5, 250, 120], [0.0, 0.0, 1.0, 1.0], id="outside-clipped"),
        pytest.param([50, 50, 50, 50], [0.25, 0.5, 0.25, 0.5], id="degenerate-point"),
    ],
)
def test_rows_to_table_normalised_coordinates(box: list[float], expected_n: list[float]) -> None:
    table = make_table([make_record("a", 1, width=200, height=100, boxes=[box])])
    got_n = [table[name][0].as_py() for name in ("x1n", "y1n", "x2n", "y2n")]
    got_px = [table[name][0].as_py() for name in ("x1", "y1", "x2", "y2")]
    assert got_n == pytest.approx(expected_n)
    assert got_px == pytest.approx(box)  # pixels are stored as the model returned them


def test_rows_to_table_does_not_mutate_inputs() -> None:
    record = make_record("a", 2)
    before = record.boxes_xyxy.copy()
    make_table([record])
    np.testing.assert_array_equal(record.boxes_xyxy, before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"ts": dt.datetime(2026, 11, 2, 12, 0)}, "timezone-aware", id="naive-ts"),
        pytest.param({"date": dt.datetime(2026, 11, 2, 12, 0)}, "datetime.date", id="datetime-as-date"),
    ],
)
def test_rows_to_table_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PredictionLogError, match=match):
        make_table([make_record("a", 1)], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("class_id", "match"),
    [
        pytest.param([0, 3], r"image 'bad': class 3 not in classes \[0\.\.2\]", id="too-high"),
        pytest.param([-1, 0], r"image 'bad': class -1 not in classes", id="negative"),
        pytest.param([0.5, 1.0], r"image 'bad': class_id values must be integers", id="fractional-float"),
    ],
)
def test_rows_to_table_rejects_bad_class_ids(class_id: list[float], match: str) -> None:
    bad = make_record("bad", 2)
    bad = ImageDetections(**{**bad.__dict__, "class_id": np.asarray(class_id)})
    with pytest.raises(PredictionLogError, match=match):
        make_table([make_record("ok", 1), bad])


def test_rows_to_table_accepts_integral_float_class_ids() -> None:
    record = make_record("a", 2)
    record = ImageDetections(**{**record.__dict__, "class_id": np.asarray([2.0, 1.0])})
    assert make_table([record])["class_id"].to_pylist() == [2, 1]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        pytest.param({"confidence": np.zeros(3)}, r"confidence has shape \(3,\), expected \(2,\)", id="conf-length"),
        pytest.param({"class_id": np.zeros((2, 1))}, r"class_id has shape \(2, 1\)", id="class-id-2d"),
        pytest.param({"boxes_xyxy": np.zeros((2, 3))}, r"boxes_xyxy has shape \(2, 3\), expected \(N, 4\)", id="xyx"),
        pytest.param({"width": 0}, "image size 0x100 must be positive", id="zero-width"),
        pytest.param({"latency_ms": float("nan")}, "latency_ms nan must be >= 0", id="nan-latency"),
        pytest.param({"image_sha256": "ABC"}, "image_sha256 'ABC' is not 64 lowercase hex", id="bad-sha"),
    ],
)
def test_image_detections_validates(changes: dict[str, object], match: str) -> None:
    fields = make_record("img7", 2).__dict__
    with pytest.raises(PredictionLogError, match=f"image 'img7': .*{match}"):
        ImageDetections(**{**fields, **changes})


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    assert plog.sha256_file(path, chunk_bytes=4) == hashlib.sha256(path.read_bytes()).hexdigest()


# append / read ------------------------------------------------------------------------------------------------------


def test_append_read_round_trip_pyarrow(tmp_path: Path, two_day_table: pa.Table) -> None:
    plog.append(tmp_path, two_day_table, part=PART)
    got = plog.read(tmp_path)
    assert got.schema == plog.SCHEMA
    assert got.sort_by("image_id").equals(two_day_table.sort_by("image_id"))

    dataset = plog.open_dataset(tmp_path).to_table()
    assert dataset.schema.field("date").type == pa.date32()
    assert sorted(dataset["date"].to_pylist()) == sorted(two_day_table["date"].to_pylist())


def test_append_read_round_trip_duckdb(tmp_path: Path, two_day_table: pa.Table) -> None:
    plog.append(tmp_path, two_day_table, part=PART)
    relation = duckdb.sql(
        f"select date, image_id, class_name, n_detections, ts "
        f"from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true) order by image_id, class_name"
    )
    types = dict(zip(relation.columns, (str(t) for t in relation.types), strict=True))
    assert types["date"] == "DATE"
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE"
    rows = relation.fetchall()
    assert len(rows) == two_day_table.num_rows
    assert ("b" in [r[1] for r in rows]) and [r[2:4] for r in rows if r[1] == "b"] == [(None, 0)]
    assert {r[0] for r in rows} == {DAY1, DAY2}


def test_append_read_round_trip_polars(tmp_path: Path, two_day_table: pa.Table) -> None:
    pl = pytest.importorskip("polars")
    plog.append(tmp_path, two_day_table, part=PART)
    frame = pl.scan_parquet(f"{tmp_path}/**/*.parquet", hive_partitioning=True).collect()
    assert frame.schema["date"] == pl.Date
    assert frame.height == two_day_table.num_rows


def test_append_partitions_by_date(tmp_path: Path, two_day_table: pa.Table) -> None:
    written = plog.append(tmp_path, two_day_table, part=PART)
    assert written == [tmp_path / f"date={d}" / f"{PART}.parquet" for d in ("2026-11-02", "2026-11-03")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["date=2026-11-02", "date=2026-11-03"]
    for path, day in zip(written, (DAY1, DAY2), strict=True):
        assert set(pq.read_table(path)["date"].to_pylist()) == {day}
    assert plog.read(tmp_path, dates=[DAY2])["image_id"].to_pylist() == ["c"] * 3
    assert plog.read(tmp_path, dates=[]).num_rows == 0


def test_reappend_same_part_is_idempotent(tmp_path: Path, two_day_table: pa.Table) -> None:
    plog.append(tmp_path, two_day_table, part=PART)
    plog.append(tmp_path, two_day_table, part=PART)
    assert plog.read(tmp_path).num_rows == two_day_table.num_rows
    assert len(list(tmp_path.rglob("*"))) == 4  # two folders, one file each, no temp files left

    rerun = make_table([make_record("a", 1)], date=DAY1)  # a re-run replaces that date's file, other dates stay
    plog.append(tmp_path, rerun, part=PART)
    assert plog.read(tmp_path, dates=[DAY1])["image_id"].to_pylist() == ["a"]
    assert plog.read(tmp_path, dates=[DAY2]).num_rows == 3


def test_different_parts_accumulate(tmp_path: Path) -> None:
    plog.append(tmp_path, make_table([make_record("a", 2)]), part="batch=1")
    plog.append(tmp_path, make_table([make_record("b", 1)]), part="batch=2")
    assert plog.read(tmp_path)["image_id"].to_pylist() == ["a", "a", "b"]


def test_append_accepts_reordered_and_nullable_declared_columns(tmp_path: Path) -> None:
    table = make_table([make_record("a", 1)])
    loose = pa.table({name: table[name] for name in reversed(table.column_names)})  # all fields nullable
    plog.append(tmp_path, loose, part=PART)
    assert plog.read(tmp_path).equals(table)


def test_append_empty_table_writes_nothing(tmp_path: Path) -> None:
    assert plog.append(tmp_path / "log", make_table([]), part=PART) == []
    assert not (tmp_path / "log").exists()


@pytest.mark.parametrize(
    ("part", "file_name"),
    [
        pytest.param(PART, f"{PART}.parquet", id="already-safe"),
        pytest.param("batch 7/model:v3", "batch_7_model_v3.parquet", id="slash-space-colon"),
        pytest.param("_hidden", "hidden.parquet", id="leading-underscore"),
        pytest.param(".hidden", "hidden.parquet", id="leading-dot"),
        pytest.param("x.parquet", "x.parquet", id="suffix-given"),
    ],
)
def test_append_sanitises_part(tmp_path: Path, part: str, file_name: str) -> None:
    [path] = plog.append(tmp_path, make_table([make_record("a", 1)]), part=part)
    assert path == tmp_path / "date=2026-11-02" / file_name
    assert plog.read(tmp_path).num_rows == 1


@pytest.mark.parametrize("part", [pytest.param("", id="empty"), pytest.param("../..", id="dots-and-slashes")])
def test_append_rejects_part_without_safe_chars(tmp_path: Path, part: str) -> None:
    with pytest.raises(PredictionLogError, match="no safe file name characters"):
        plog.append(tmp_path, make_table([make_record("a", 1)]), part=part)
    assert list(tmp_path.iterdir()) == []


def _drop(table: pa.Table, name: str) -> pa.Table:
    return table.drop_columns([name])


def _retype(table: pa.Table, name: str, arrow_type: pa.DataType) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, pa.field(name, arrow_type), table[name].cast(arrow_type))


def _with_null(table: pa.Table, name: str) -> pa.Table:
    index = table.schema.get_field_index(name)
    values = pa.array([None] * table.num_rows, type=table.schema.field(name).type)
    return table.set_column(index, pa.field(name, values.type), values)


BAD_TABLES = [
    pytest.param(lambda t: _drop(t, "confidence"), ["missing column confidence"], id="missing-column"),
    pytest.param(
        lambda t: _retype(t, "confidence", pa.float64()),
        ["column confidence has type double, expected float"],
        id="wrong-type",
    ),
    pytest.param(
        lambda t: _retype(t, "ts", pa.timestamp("us")),
        ["column ts has type timestamp[us], expected timestamp[us, tz=UTC]"],
        id="naive-timestamp",
    ),
    pytest.param(
        lambda t: t.append_column("score", t["confidence"]),
        ["unexpected column score"],
        id="extra-column",
    ),
    pytest.param(
        lambda t: _with_null(t, "image_sha256"),
        ["column image_sha256 is not nullable but has 2 null(s)"],
        id="null-in-not-null",
    ),
    pytest.param(
        lambda t: _retype(_drop(t, "x1n"), "class_id", pa.int64()),
        ["missing column x1n", "column class_id has type int64, expected int16"],
        id="two-problems",
    ),
]


@pytest.mark.parametrize(("corrupt", "problems"), BAD_TABLES)
def test_append_rejects_wrong_schema_and_writes_nothing(tmp_path: Path, corrupt, problems: list[str]) -> None:
    table = corrupt(make_table([make_record("a", 2)]))
    with pytest.raises(PredictionLogError, match="table to append") as info:
        plog.append(tmp_path / "log", table, part=PART)
    for problem in problems:
        assert problem in str(info.value)
    assert not (tmp_path / "log").exists()


# read: validation and robustness -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("corrupt", "problems"), BAD_TABLES)
def test_read_rejects_wrong_schema_file(tmp_path: Path, corrupt, problems: list[str]) -> None:
    plog.append(tmp_path, make_table([make_record("good", 1)]), part="good")
    bad_path = tmp_path / "date=2026-11-02" / "foreign.parquet"
    pq.write_table(corrupt(make_table([make_record("a", 2)])), bad_path)
    with pytest.raises(PredictionLogError) as info:
        plog.read(tmp_path)
    message = str(info.value)
    assert str(bad_path) in message
    for problem in problems:
        assert problem in message


@pytest.mark.parametrize(
    ("make_file", "problem"),
    [
        pytest.param(
            lambda root: (root / "date=2026-11-02" / "junk.parquet").write_bytes(b"PAR1 not parquet"),
            "not a readable Parquet file",
            id="not-parquet",
        ),
        pytest.param(
            lambda root: pq.write_table(
                make_table([make_record("x", 1)], date=DAY2), root / "date=2026-11-02/x.parquet"
            ),
            "column date has 2026-11-03 but the folder says 2026-11-02",
            id="date-differs-from-folder",
        ),
        pytest.param(
            lambda root: pq.write_table(make_table([make_record("x", 1)]), root / "stray.parquet"),
            "not inside a date=YYYY-MM-DD folder",
            id="outside-partition",
        ),
        pytest.param(
            lambda root: pq.write_table(make_table([make_record("x", 1)]), root / "date=2026-11-02/_x.parquet"),
            "skipped by PyArrow but read by DuckDB",
            id="hidden-parquet-name",
        ),
    ],
)
def test_read_rejects_bad_files(tmp_path: Path, make_file, problem: str) -> None:
    plog.append(tmp_path, make_table([make_record("good", 1)]), part="good")
    make_file(tmp_path)
    with pytest.raises(PredictionLogError, match=problem):
        plog.read(tmp_path)


def test_read_ignores_half_written_temp_file(tmp_path: Path, two_day_table: pa.Table) -> None:
    [target, _] = plog.append(tmp_path, two_day_table, part=PART)
    data = target.read_bytes()
    # What a crash between write and rename leaves behind, named as _write_atomic names its temp files.
    (target.parent / f".{target.name}.0123456789abcdef{plog.TEMP_SUFFIX}").write_bytes(data[: len(data) // 2])
    before = list(tmp_path.rglob("*"))

    assert plog.read(tmp_path).num_rows == two_day_table.num_rows
    assert plog.open_dataset(tmp_path).count_rows() == two_day_table.num_rows
    count = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true)")
    assert count.fetchall() == [(two_day_table.num_rows,)]
    pl = pytest.importorskip("polars")
    assert (
        pl.scan_parquet(f"{tmp_path}/**/*.parquet", hive_partitioning=True).collect().height == two_day_table.num_rows
    )
    assert plog.logged_batches(tmp_path) == {
        LoggedBatch("2026-11-02", "visionloop-detector", "3"),
        LoggedBatch("2026-11-03", "visionloop-detector", "3"),
    }
    assert list(tmp_path.rglob("*")) == before  # read modifies nothing


def test_crash_during_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [target] = plog.append(tmp_path, make_table([make_record("old", 2)]), part=PART)

    def crash(table: pa.Table, where, **kwargs) -> None:
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(plog.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        plog.append(tmp_path, make_table([make_record("new", 1)]), part=PART)
    assert plog.read(tmp_path)["image_id"].to_pylist() == ["old", "old"]
    assert sorted(target.parent.iterdir()) == [target]  # temp file removed


@pytest.mark.parametrize(
    "make_root",
    [
        pytest.param(lambda tmp: tmp / "missing", id="missing"),
        pytest.param(lambda tmp: tmp, id="empty-folder"),
        pytest.param(lambda tmp: (tmp / "date=2026-11-02").mkdir() or tmp, id="empty-partition"),
    ],
)
def test_read_empty_log(tmp_path: Path, make_root) -> None:
    root = make_root(tmp_path)
    table = plog.read(root)
    assert table.num_rows == 0
    assert table.schema == plog.SCHEMA
    assert plog.logged_batches(root) == set()


def test_read_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("")
    with pytest.raises(PredictionLogError, match="not a folder"):
        plog.read(tmp_path / "log")


def test_logged_batches(tmp_path: Path) -> None:
    plog.append(tmp_path, make_table([make_record("a", 2)], model_version="3"), part="b1-v3")
    plog.append(tmp_path, make_table([make_record("a", 0)], model_version="4"), part="b1-v4")
    plog.append(tmp_path, make_table([make_record("c", 1)], batch="b2", date=DAY2), part="b2-v3")
    assert plog.logged_batches(tmp_path) == {
        LoggedBatch("2026-11-02", "visionloop-detector", "3"),
        LoggedBatch("2026-11-02", "visionloop-detector", "4"),
        LoggedBatch("b2", "visionloop-detector", "3"),
    }


def test_logged_batches_rejects_wrong_schema(tmp_path: Path) -> None:
    bad = tmp_path / "date=2026-11-02" / "bad.parquet"
    bad.parent.mkdir()
    pq.write_table(make_table([make_record("a", 1)]).drop_columns(["model_version"]), bad)
    with pytest.raises(PredictionLogError, match="missing column model_version"):
        plog.logged_batches(tmp_path)


def test_module_docstring_documents_every_column() -> None:
    doc = prediction_schema.__doc__ or ""  # the schema's owner module holds the field table
    for field in plog.SCHEMA:
        assert f"`{field.name}`" in doc, f"{field.name} missing from the schema table"
