"""Bad input corpus (issue 12, item 4): one table of bad inputs, each refused with a clear error or accepted on purpose.

Every row writes one kind of bad input into a fresh tiny project (``World``), then calls the project's real entry
point for it (a stage's ``run`` or the contract reader the stages use). A refused input must raise the expected
error class with a message naming what and where (file, line, row, key, task); an accepted one (``error=None``)
must come back converted as the row's ``check`` says. Either way *nothing already stored changes*: every file under
the project (prediction log, sample manifest, ledger, outbox, labels, merged manifest and shards) and the folder
outside it are hashed before and after the call (``reports/`` is left out: a refusing stage reports why).

Rows built with :func:`fixed` are defects this corpus found and that were fixed (each ``why`` says what was wrong:
a decompression bomb escaping without the file name, 16-bit images decoded all white, a byte-order mark refusing a
label file, a log batch copied twice doubling its boxes, a champion whose version was deleted read as no champion).
The registry rows break a real MLflow SQLite store in the project (two pyfunc versions promoted by the promote stage,
so the audit trail is its own) the way MLflow and a cleanup leave it. A new defect goes in as
``pytest.param(case, id=kind, marks=pytest.mark.xfail(strict=True, reason="defect: ..."))`` until it is fixed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tasks import cycle, label, merge, monitor, predict, promote
from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters.broken_alias import BrokenAliasError
from tasks.config import ConfigError, Params, load_params
from tasks.contracts import annotations as ls
from tasks.contracts import monitor_frames, prediction_log
from tasks.contracts.label_tasks import LabelError
from tasks.contracts.merged_manifest import MANIFEST
from tasks.contracts.prediction_schema import PredictionLogError
from tasks.contracts.yolo_labels import DatasetError, image_size, load_rgb, read_label_file
from tests.conftest import tiny_params_dict
from tests.integration.test_predict_shadow import constant_detector
from tests.unit.test_label import (
    BATCH,
    CLASSES,
    CYCLE,
    MANIFEST_SCHEMA,
    annotation,
    export_from_outbox,
    region,
    write_cycle,
)

SIZE = 32


@dataclass
class World:
    """A tiny project: params under ``root``, a prediction log, a sample manifest, a ledger and the label outbox."""

    root: Path
    outside: Path
    params: Params
    rows: list[dict[str, Any]]
    merged: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def write_set(self, folder: Path, stems: list[str], *, tone: int) -> None:
        """A YOLO set of distinct 32 px PNGs, one box each."""
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        for index, stem in enumerate(stems):
            Image.new("RGB", (SIZE, SIZE), (tone * 60 + index, 20 * index, 7)).save(folder / "images" / f"{stem}.png")
            (folder / "labels" / f"{stem}.txt").write_text(f"{index % 3} 0.5 0.5 0.25 0.25\n")

    def ensure_merged(self) -> None:
        """Historical sets and one labeled cycle, merged once: a merged manifest and shards to keep intact."""
        if self.merged:
            return
        paths = self.params.base.paths
        self.write_set(paths.train, [f"train_{i:06d}" for i in range(4)], tone=0)
        self.write_set(paths.val, [f"val_{i:06d}" for i in range(2)], tone=1)
        self.write_set(paths.golden, [f"golden_{i:06d}" for i in range(2)], tone=2)
        self.write_set(paths.labels / "c000", [f"c000_{i:06d}" for i in range(3)], tone=3)
        merge.run(self.params, cycle="c000")
        assert (paths.merged / MANIFEST).is_file()
        self.merged = True

    def file(self, relative: str, data: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    data = tiny_params_dict(tmp_path, label={"backend": "files", "document_root": str(tmp_path), "min_labeled": 3})
    data["base"]["classes"] = CLASSES
    data["world"]["source"]["class_weights"] = None
    data["world"]["scenarios"] = {}
    data["world"]["production"].update(scenario=[], sources={"default": {"share": 1.0}})
    params = Params.model_validate(data)
    # the registry rows use the project's own store, whatever an earlier test left in the variable (which
    # mlflow.set_tracking_uri writes: set here, the monkeypatch puts it back after)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", params.registry.tracking_uri)
    mlflow_adapter._user_tracking_uri.cache_clear()
    rows = write_cycle(params, n=3)
    label.run(params, cycle=CYCLE)  # ledger + outbox: stored state the bad input must not touch
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(Image.new("RGB", (8, 8), (1, 2, 3))))
    yield World(tmp_path, outside, params, rows)
    mlflow_adapter._user_tracking_uri.cache_clear()


def snapshot(w: World) -> dict[str, str]:
    """SHA-256 of every stored file in the project and the outside folder (``reports/`` left out)."""
    reports = w.params.base.paths.reports
    out = {}
    for top in (w.root, w.outside):
        for path in sorted(top.rglob("*")):
            if path.is_file() and reports not in path.parents:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------- input builders


def png_bytes(img: Image.Image, fmt: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid-looking PNG header declaring ``width x height`` pixels (900 M) with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def decode(path: Path) -> np.ndarray:
    """Decode through both image entry points: the predict stage's reader and the strict contract reader.

    They must agree: predict records an undecodable file as error ``decode`` naming it (it never raises), and
    :func:`load_rgb` raises :class:`DatasetError` naming it.
    """
    read = predict.read_image(path, source="test")
    try:
        rgb = load_rgb(path)
    except DatasetError:
        assert read.error == "decode" and str(path) in read.why, read
        raise
    assert read.error is None and read.rgb is not None and np.array_equal(read.rgb, rgb)
    return rgb


def image_case(data: Callable[[], bytes], name: str = "bad.png") -> Callable[[World], Callable[[], Any]]:
    def build(w: World) -> Callable[[], Any]:
        path = w.file(f"incoming/{name}", data())
        w.notes["path"] = path
        return lambda: decode(path)

    return build


def rgb_of(mode: str, size: tuple[int, int] = (6, 4), value: Any = None, fmt: str = "PNG") -> Callable[[], bytes]:
    def make() -> bytes:
        img = Image.new(mode, size, value)
        return png_bytes(img, fmt)

    return make


def exif_rotated() -> bytes:
    img = Image.new("RGB", (6, 4), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° CW to display
    return png_bytes(img, "JPEG", exif=exif.tobytes())


def label_case(text: bytes) -> Callable[[World], Callable[[], Any]]:
    def build(w: World) -> Callable[[], Any]:
        path = w.file("incoming/labels/x.txt", text)
        return lambda: read_label_file(path, num_classes=len(CLASSES))

    return build


def merge_with_label(text: str) -> Callable[[World], Callable[[], Any]]:
    """A new labeled cycle ``c001`` whose second label file holds ``text``; merge is asked to merge it."""

    def build(w: World) -> Callable[[], Any]:
        w.ensure_merged()
        w.write_set(w.params.base.paths.labels / "c001", ["c001_000000", "c001_000001"], tone=4)
        (w.params.base.paths.labels / "c001" / "labels" / "c001_000001.txt").write_text(text)
        return lambda: merge.run(w.params, cycle="c001")

    return build


def export_case(result: list[dict[str, Any]] | None = None, task: dict[str, Any] | None = None):
    """Label Studio export in the inbox: rank 1's annotation ``result``, or a raw extra ``task``."""

    def build(w: World) -> Callable[[], Any]:
        if task is not None:
            inbox = w.params.base.paths.labels / "inbox"
            inbox.mkdir(parents=True, exist_ok=True)
            (inbox / "export.json").write_text(json.dumps([task]))
        else:
            export_from_outbox(w.params, {1: [annotation(2, "2026-11-03T10:00:00Z", result=result)]})
        return lambda: label.run(w.params, cycle=CYCLE)

    return build


def convert(result: list[dict[str, Any]]) -> Callable[[World], Callable[[], Any]]:
    return lambda w: lambda: ls.annotation_to_yolo(result, classes=CLASSES, where="task 7 (image img_1)")


def polygon() -> dict[str, Any]:
    value = {"points": [[10, 10], [30, 10], [20, 30]], "polygonlabels": ["circle"]}
    return {"id": "p1", "type": "polygonlabels", "from_name": "label", "to_name": "image", "value": value}


def log_file(table: Callable[[World], pa.Table]) -> Callable[[World], Callable[[], Any]]:
    """Write ``table`` as an extra prediction-log file (a tampered or foreign writer); read it as monitor does."""

    def build(w: World) -> Callable[[], Any]:
        folder = w.params.base.paths.predictions / f"date={dt.date(2026, 11, 2).isoformat()}"
        path = folder / "tampered.parquet"
        pq.write_table(table(w), path)
        w.notes["path"] = path
        return lambda: monitor_frames.frames(
            prediction_log.read(w.params.base.paths.predictions), imgsz=64, low_confidence=0.3
        )

    return build


def logged(w: World) -> pa.Table:
    return prediction_log.read(w.params.base.paths.predictions)


def with_nan_confidence(w: World) -> pa.Table:
    table = logged(w)
    conf = table.column("confidence").to_pylist()
    first = next(i for i, v in enumerate(conf) if v is not None)
    conf[first] = math.nan
    index = table.schema.get_field_index("confidence")
    return table.set_column(index, table.schema.field(index), pa.array(conf, type=table.schema.field(index).type))


def wrong_schema(w: World) -> pa.Table:
    table = logged(w)
    index = table.schema.get_field_index("confidence")
    return table.set_column(index, "confidence", pa.array([str(v) for v in table.column("confidence").to_pylist()]))


def params_case(change: Callable[[dict[str, Any]], None]) -> Callable[[World], Callable[[], Any]]:
    def build(w: World) -> Callable[[], Any]:
        data = tiny_params_dict(w.root)
        change(data)
        path = w.file("bad-params.yaml", yaml.safe_dump(data).encode())
        return lambda: load_params(path)

    return build


def manifest_case(edit: Callable[[World, dict[str, Any]], None]) -> Callable[[World], Callable[[], Any]]:
    """A new sample manifest (two fresh images) whose second row ``edit`` tampers with; label.run imports it."""

    def build(w: World) -> Callable[[], Any]:
        rows = write_cycle(w.params, n=2, cycle="c002", start=10)
        edit(w, rows[1])
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), label.manifest_path(w.params, "c002"))
        return lambda: label.run(w.params, cycle="c002")

    return build


def outside_uri(how: str) -> Callable[[World, dict[str, Any]], None]:
    def edit(w: World, row: dict[str, Any]) -> None:
        target = w.outside / "secret.png"
        if how == "dotdot":
            inside = w.params.base.paths.production / BATCH / "images"
            row["image_uri"] = str(inside) + "/.." * len(inside.parts[1:]) + str(target)
        else:
            link = w.params.base.paths.production / BATCH / "images" / "linked.png"
            link.symlink_to(target)
            row["image_uri"] = link.as_uri()
        w.notes["target"] = target

    return edit


def promoted_twice(w: World) -> Any:
    """The world's registry as the loop leaves it: v1 then v2 promoted by the promote stage (champion v2, previous
    v1, the audit trail the stage's own), each a real pyfunc version (constant ONNX detector, checkpoint, report)
    registered from its own training run. Returns the MLflow client."""
    params = w.params
    assert mlflow_adapter.tracking_uri(params) == params.registry.tracking_uri  # never a store outside the test
    files = w.root / "candidate"
    onnx = constant_detector(files / "model.onnx", [[8.0, 8.0, 24.0, 24.0, 0.9, 1.0]])
    (weights := files / "best.pt").write_bytes(b"checkpoint")
    (report := files / "train.json").write_text("{}")
    for version in ("1", "2"):
        with mlflow_adapter.mlflow_run(params, run_name=f"train-v{version}") as run_id:
            pass
        info = mlflow_adapter.register_model(params, run_id=run_id, weights=weights, onnx=onnx, reports={"r": report})
        assert info.version == version
        promote.promote(params, version=version, why="test", who="test")
    return mlflow_adapter.client(params)


def version_deleted(version: str) -> Callable[[World, Any], None]:
    """Delete ``version`` through MLflow, which marks it deleted and drops its aliases (the store then has none)."""

    def breakage(w: World, client: Any) -> None:
        client.delete_model_version(w.params.registry.model_name, version)
        assert version not in {a for a in client.get_registered_model(w.params.registry.model_name).aliases}

    return breakage


def files_deleted(w: World, client: Any) -> None:
    """Delete the champion's model files from the artifact store (a cleanup); MLflow still lists the version."""
    uri = client.get_model_version_download_uri(w.params.registry.model_name, "2")
    folder = Path(uri.removeprefix("file://"))
    assert folder.is_dir() and w.params.registry.artifact_root in folder.parents, uri
    shutil.rmtree(folder)


def registry_case(
    breakage: Callable[[World, Any], None], entry: Callable[[World], Any]
) -> Callable[[World], Callable[[], Any]]:
    """A registry promoted twice, then broken; ``entry`` is the stage that needs the alias."""

    def build(w: World) -> Callable[[], Any]:
        breakage(w, promoted_twice(w))
        return lambda: entry(w)

    return build


def loop_champion(w: World) -> Any:
    return cycle.fetch_champion(w.params)  # the loop's ``champion`` stage: warm start, gate reference


# ---------------------------------------------------------------------------------------------- checks of accepted rows


def is_rgb(shape: tuple[int, int, int], pixel: tuple[int, int, int] | None = None) -> Callable[[Any, World], None]:
    def check(rgb: np.ndarray, w: World) -> None:
        assert rgb.dtype == np.uint8 and rgb.shape == shape
        if pixel is not None:
            np.testing.assert_allclose(rgb[0, 0], pixel, atol=2)

    return check


def boxes(classes: list[int], xywhn: list[list[float]]) -> Callable[[Any, World], None]:
    def check(got: Any, w: World) -> None:
        cls, box = got if isinstance(got, tuple) else (got.class_id, got.boxes_xywhn)
        assert cls.tolist() == classes
        np.testing.assert_allclose(box, np.asarray(xywhn, dtype=float).reshape(-1, 4), atol=1e-9)

    return check


def upright_as_training_sees_it(got: Any, w: World) -> None:
    """Stored 6 x 4 with orientation 6: shown 4 wide, 6 high by OpenCV (what Ultralytics trains on), Ultralytics'
    label checks (``exif_size``) and browsers (Label Studio); visionloop's pixels and sizes must agree."""
    import cv2
    from ultralytics.data.utils import exif_size

    path = w.notes["path"]
    assert got.shape == (6, 4, 3), got.shape
    assert cv2.imread(str(path)).shape == got.shape  # OpenCV applies EXIF orientation by default
    assert cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION).shape == (4, 6, 3)
    with Image.open(path) as img:
        assert img.size == (6, 4) and exif_size(img) == (4, 6)  # stored; Ultralytics' size as shown
    assert image_size(path) == (4, 6)  # label sizes (Label Studio's original_width/height) as shown
    assert tuple(got[0, 0]) == tuple(got[-1, -1]) and abs(int(got[0, 0, 0]) - 200) < 8  # colour kept


def rejected_polygon(got: ls.YoloLabel, w: World) -> None:
    assert got.class_id.tolist() == [] and len(got.rejected) == 1
    assert "task 7 (image img_1) region p1: not a label/rectanglelabels box (type 'polygonlabels')" in got.rejected[0]


def rotated_hull(got: ls.YoloLabel, w: World) -> None:
    # 20 x 10 px at (50, 50) px of a 100 x 100 image, turned 90° clockwise about its top-left corner: x 40..50, y 50..70
    assert got.class_id.tolist() == [0] and got.rejected == []  # kept, counted as one box
    np.testing.assert_allclose(got.boxes_xywhn, [[0.45, 0.6, 0.1, 0.2]], atol=1e-9)


def nan_dropped(fr: monitor_frames.Frames, w: World) -> None:
    assert any("NaN, infinite or out-of-range confidence" in p and BATCH in p for p in fr.problems), fr.problems
    assert not any(math.isnan(v) for v in fr.boxes["confidence"].to_list())


def duplicates_counted_once(fr: monitor_frames.Frames, w: World) -> None:
    assert fr.images.height == len(w.rows), fr.images  # one row per image, not two
    assert fr.boxes.height == 3, f"{fr.boxes.height} box rows"  # write_cycle logs 0 + 1 + 2 boxes: each once
    assert any("duplicate" in p and BATCH in p for p in fr.problems), fr.problems  # and says so


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """One kind of bad input: how to write it and call the entry point, then the expected error or acceptance."""

    build: Callable[[World], Callable[[], Any]]
    error: type[BaseException] | None
    match: str = ""
    check: Callable[[Any, World], None] | None = None


def fixed(case: Case, kind: str, why: str) -> Any:
    """A defect this corpus found and that is fixed now (``why`` says what it was): a plain row, it must pass."""
    return pytest.param(case, id=kind)


IMG = r"incoming/bad\.png: unreadable or truncated image"
LBL = r"incoming/labels/x\.txt line {line}: "
ONE_BOX = b"0 0.5 0.5 0.25 0.25\n"
ROLLBACK = r"nothing was changed: run `make rollback` \(champion back to 'previous'\) or `make rollback VERSION=<n>`"
DELETED = (
    r"model 'visionloop-detector': alias 'champion' is gone with version 2, which was deleted from sqlite:///.*"
    r"the audit trail .*aliases\.jsonl last moved 'champion' to v2\); " + ROLLBACK
)
GONE = r"model 'visionloop-detector' version 2 \(alias 'champion'\): no {what} in its artifacts at file://.*" + ROLLBACK
CASES = [
    # images: refused by the contract reader (DatasetError) and logged as error 'decode' by predict
    pytest.param(Case(image_case(lambda: b"\x89PNG\r\n\x1a\n garbage"), DatasetError, IMG), id="image-corrupt"),
    pytest.param(
        Case(image_case(lambda: png_bytes(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:-200]), DatasetError, IMG),
        id="image-truncated",
    ),
    pytest.param(Case(image_case(lambda: b""), DatasetError, IMG), id="image-zero-byte"),
    pytest.param(Case(image_case(lambda: b"just some text\n"), DatasetError, IMG), id="image-text-named-png"),
    fixed(
        Case(image_case(bomb_png), DatasetError, IMG),
        "image-decompression-bomb",
        "tasks/contracts/yolo_labels.py load_rgb/image_size let PIL.Image.DecompressionBombError escape (not an "
        "OSError): the message does not name the file and the error is no VisionloopError",
    ),
    # images accepted and converted to RGB uint8
    pytest.param(
        Case(image_case(rgb_of("L", value=128)), None, check=is_rgb((4, 6, 3), (128, 128, 128))),
        id="image-grayscale-accepted",
    ),
    pytest.param(
        Case(image_case(rgb_of("RGBA", value=(10, 20, 30, 0))), None, check=is_rgb((4, 6, 3), (10, 20, 30))),
        id="image-rgba-accepted-alpha-dropped",
    ),
    pytest.param(
        Case(
            image_case(rgb_of("CMYK", value=(0, 255, 255, 0), fmt="JPEG"), "cmyk.jpg"),
            None,
            check=is_rgb((4, 6, 3), (255, 0, 0)),
        ),
        id="image-cmyk-accepted",
    ),
    fixed(
        Case(image_case(rgb_of("I;16", value=1000)), None, check=is_rgb((4, 6, 3), (4, 4, 4))),
        "image-16bit-accepted-scaled",
        "tasks/contracts/yolo_labels.py load_rgb and tasks/predict.py read_image convert 16-bit grayscale with "
        "Image.convert('RGB'), which clips every value above 255: a 16-bit image decodes all white",
    ),
    fixed(
        Case(image_case(exif_rotated, "rotated.jpg"), None, check=upright_as_training_sees_it),
        "image-exif-rotated-transposed",
        "tasks/core/pixels.py decoded a photo as stored (6 x 4) and ignored its EXIF orientation, while Ultralytics "
        "trains on OpenCV's decode and Label Studio shows it in a browser, both turned upright (4 x 6): labels and "
        "predictions of rotated photos were in different coordinates",
    ),
    # YOLO label files: the strict reader every stage shares
    pytest.param(
        Case(label_case(b"0 nan 0.5 0.2 0.2\n"), DatasetError, LBL.format(line=1) + r".*not finite"), id="label-nan"
    ),
    pytest.param(
        Case(label_case(ONE_BOX + b"0 0.5 inf 0.2 0.2\n"), DatasetError, LBL.format(line=2) + r".*not finite"),
        id="label-inf",
    ),
    pytest.param(
        Case(label_case(b"0 -0.5 0.5 0.2 0.2\n"), DatasetError, LBL.format(line=1) + r".*outside \[0, 1\]"),
        id="label-negative",
    ),
    pytest.param(
        Case(label_case(b"1 0.9 0.5 0.4 0.2\n"), DatasetError, LBL.format(line=1) + r".*outside \[0, 1\]"),
        id="label-out-of-range",
    ),
    pytest.param(
        Case(label_case(b"1 0.5 0.5 0 0.2\n"), DatasetError, LBL.format(line=1) + "zero-area box"), id="label-zero-area"
    ),
    pytest.param(
        Case(label_case(b"1 0.5 0.5 0.2\n"), DatasetError, LBL.format(line=1) + r"expected 'class cx cy w h', got 4"),
        id="label-wrong-columns",
    ),
    pytest.param(
        Case(
            label_case(b"7 0.5 0.5 0.2 0.2\n"), DatasetError, LBL.format(line=1) + r"class 7 not in classes \[0\.\.2\]"
        ),
        id="label-unknown-class",
    ),
    pytest.param(
        Case(label_case(b"\xff\xfe0 0.5\n"), DatasetError, LBL.format(line=1) + "not UTF-8 text"), id="label-not-utf8"
    ),
    pytest.param(
        Case(label_case(ONE_BOX + ONE_BOX), None, check=boxes([0, 0], [[0.5, 0.5, 0.25, 0.25]] * 2)),
        id="label-duplicate-lines-accepted",
    ),
    pytest.param(
        Case(
            label_case(b"0 0.5 0.5 0.25 0.25\r\n2 0.1 0.1 0.2 0.2\r\n"),
            None,
            check=boxes([0, 2], [[0.5, 0.5, 0.25, 0.25], [0.1, 0.1, 0.2, 0.2]]),
        ),
        id="label-crlf-accepted",
    ),
    fixed(
        Case(label_case(b"\xef\xbb\xbf" + ONE_BOX), None, check=boxes([0], [[0.5, 0.5, 0.25, 0.25]])),
        "label-bom-accepted",
        "tasks/contracts/yolo_labels.py read_label_lines decodes with 'utf-8', not 'utf-8-sig': a BOM makes "
        "line 1's class '\\ufeff0' and the file is refused",
    ),
    pytest.param(
        Case(
            merge_with_label("0 0.5 0.5 0.25 0.25\n1 nan 0.5 0.1 0.1\n"),
            merge.MergeError,
            r"c001/labels/c001_000001\.txt line 2: .*not finite.*run the validate stage",
        ),
        id="merge-label-nan-refused-manifest-intact",
    ),
    # Label Studio exports (files backend: the inbox), and the converter for region kinds
    pytest.param(
        Case(
            export_case([region(1, 1, 5, 5, "dog")]),
            LabelError,
            r"task 101 .*region r: label 'dog' not in base\.classes",
        ),
        id="export-unknown-label",
    ),
    pytest.param(
        Case(
            export_case(task={"id": 9, "data": {"image": "x.png"}, "annotations": []}),
            LabelError,
            r"export\.json task #0 \(id 9\): no data\.image_sha256",
        ),
        id="export-missing-image-reference",
    ),
    pytest.param(Case(convert([polygon()]), None, check=rejected_polygon), id="export-polygon-left-out-and-named"),
    pytest.param(
        Case(
            convert([region(50, 50, 20, 10, rotation=90, original_width=100, original_height=100)]),
            None,
            check=rotated_hull,
        ),
        id="export-rotated-rectangle-hull",
    ),
    pytest.param(
        Case(
            convert([region(1, 1, 5, 5, rotation=30)]),
            ls.LabelConversionError,
            r"task 7 \(image img_1\) region r: rotated box without original_width",
        ),
        id="export-rotated-without-size",
    ),
    # prediction logs
    pytest.param(
        Case(
            log_file(wrong_schema),
            PredictionLogError,
            r"(?s)tampered\.parquet: does not match.*column confidence has type string",
        ),
        id="log-wrong-schema",
    ),
    pytest.param(
        Case(log_file(with_nan_confidence), None, check=nan_dropped), id="log-nan-confidence-dropped-with-problem"
    ),
    fixed(
        Case(log_file(logged), None, check=duplicates_counted_once),
        "log-duplicate-rows",
        "tasks/contracts/monitor_frames.py frames keeps both copies of every box row of a batch logged twice "
        "(images are merged, boxes doubled) and reports no problem",
    ),
    # params
    pytest.param(
        Case(
            params_case(lambda d: d["sample"].update(budgett=3)),
            ConfigError,
            r"(?s)bad-params\.yaml: 1 invalid setting.*sample\.budgett: Extra inputs",
        ),
        id="params-unknown-key",
    ),
    pytest.param(
        Case(
            params_case(lambda d: d["train"].update(epochs="many")),
            ConfigError,
            r"train\.epochs: Input should be a valid integer",
        ),
        id="params-wrong-type",
    ),
    pytest.param(
        Case(
            params_case(lambda d: d["sample"].update(budget=-5)),
            ConfigError,
            r"sample\.budget: Input should be greater than or equal to 0",
        ),
        id="params-negative-budget",
    ),
    # paths from data: ids and URIs that point out of the root
    pytest.param(
        Case(
            manifest_case(lambda w, r: r.update(image_id="../../../escaped")),
            LabelError,
            r"cycle c002: sample manifest row 1: image id '\.\./\.\./\.\./escaped'",
        ),
        id="path-dotdot-image-id",
    ),
    pytest.param(
        Case(
            manifest_case(lambda w, r: r.update(image_id=str(w.outside / "secret"))),
            LabelError,
            r"sample manifest row 1: image id '/.*secret': an image id names a file",
        ),
        id="path-absolute-image-id",
    ),
    pytest.param(
        Case(
            manifest_case(outside_uri("dotdot")), LabelError, r"secret\.png: not below the Label Studio document root"
        ),
        id="path-dotdot-uri-outside-root",
    ),
    pytest.param(
        Case(
            manifest_case(outside_uri("symlink")), LabelError, r"linked\.png: not below the Label Studio document root"
        ),
        id="path-symlink-out-of-root",
    ),
    # the registry: an alias whose version was deleted (MLflow drops its aliases) or whose files are gone
    fixed(
        Case(registry_case(version_deleted("2"), loop_champion), BrokenAliasError, DELETED),
        "registry-champion-version-deleted-loop",
        "MLflow drops a deleted version's aliases: tasks/cycle.py fetch_champion read the store's missing 'champion' "
        "as no champion, so the loop judged its candidate on its own and would promote it over no champion at all",
    ),
    fixed(
        Case(registry_case(version_deleted("2"), lambda w: predict.run(w.params)), BrokenAliasError, DELETED),
        "registry-champion-version-deleted-predict",
        "tasks/adapters/mlflow.py get_alias said the model has no 'champion' alias and to create the first champion "
        "with the bootstrap flow (a retrain from scratch) instead of naming the deleted version and the rollback",
    ),
    fixed(
        Case(registry_case(version_deleted("2"), lambda w: monitor.run(w.params)), BrokenAliasError, DELETED),
        "registry-champion-version-deleted-audit-trail-names-it-monitor",
        "the monitor resolved the deleted champion as no alias and asked for a bootstrap, while the audit trail "
        "it reads names v2 as the champion",
    ),
    fixed(
        Case(registry_case(files_deleted, loop_champion), BrokenAliasError, GONE.format(what="PyTorch checkpoint")),
        "registry-champion-files-deleted-loop",
        "tasks/adapters/mlflow.py _download_model_file raised a bare FileNotFoundError naming the local download "
        "folder, not the artifact store, the alias or what to run",
    ),
    fixed(
        Case(
            registry_case(files_deleted, lambda w: predict.run(w.params)),
            BrokenAliasError,
            GONE.format(what="ONNX artifact"),
        ),
        "registry-champion-files-deleted-predict",
        "the same bare FileNotFoundError, from the predict stage's ONNX fallback",
    ),
    pytest.param(
        Case(
            registry_case(version_deleted("1"), lambda w: promote.rollback(w.params)),
            promote.RollbackError,
            r"model 'visionloop-detector' has no 'previous' alias to roll back to; name a version",
        ),
        id="registry-previous-version-deleted-rollback",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(world: World, case: Case) -> None:
    call = case.build(world)
    before = snapshot(world)
    if case.error is None:
        got = call()
        assert case.check is not None
        case.check(got, world)
    else:
        with pytest.raises(case.error, match=case.match):
            call()
    after = snapshot(world)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"stored files changed: {changed}"
    assert not (world.params.base.paths.labels / "c002").joinpath("labels").exists()
    assert not list(world.root.parent.glob("escaped*"))


@pytest.mark.parametrize(
    ("breakage", "moves"),
    [
        (version_deleted("2"), {"champion": [None, "1"]}),
        (files_deleted, {"champion": ["2", "1"], "previous": ["1", "2"]}),
    ],
    ids=["version-deleted", "files-deleted"],
)
def test_the_rollback_a_broken_champion_names_repairs_it(world: World, breakage: Any, moves: dict[str, Any]) -> None:
    """What the refusal says to run works: ``make rollback`` (the rollback flow's stage) makes v1 champion again."""
    breakage(world, promoted_twice(world))
    result = promote.rollback(world.params, why="champion broken")
    assert result.moves == moves
    champion = cycle.fetch_champion(world.params)
    assert champion is not None and champion.version == "1"


def test_the_corpus_covers_at_least_25_kinds() -> None:
    assert len(CASES) >= 25
