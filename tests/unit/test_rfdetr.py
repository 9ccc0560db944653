"""The RF-DETR family without training: config, the COCO view, checkpoints, licenses, the head and the decoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper
from PIL import Image

from tasks.config import ConfigError, Params, load_params
from tasks.config.sections import RFDETR_HUB_SIZES, RFDETR_OFFLINE_SIZES
from tasks.contracts.checkpoints import UntrustedCheckpointError
from tasks.contracts.yolo_labels import DatasetError
from tasks.core.hashing import file_sha256
from tasks.env import PROJECT_ROOT
from tasks.models import FAMILIES, family, rfdetr, rfdetr_coco, rfdetr_net, yolo
from tasks.models.base import FAMILY_KEY, TrainData, declared_family
from tasks.runtimes import detectors
from tasks.runtimes.detectors import InferenceSettings, load_detector
from tasks.targets import quantize

CLASSES = ("circle", "triangle", "square")


def rfdetr_params(**train: object) -> Params:
    settings = {"family": "rfdetr", "model": "rfdetr-nano"} | train
    return load_params(PROJECT_ROOT / "params.yaml", overrides={"train": settings})


# ------------------------------------------------------------------ config: sizes that build offline


@pytest.mark.parametrize(
    "train, problem",
    [
        *(
            pytest.param({"rfdetr": {"size": size}}, f"size '{size}' needs a download", id=f"hub-{size}")
            for size in RFDETR_HUB_SIZES
        ),
        pytest.param({"rfdetr": {"size": "huge"}}, "not an RF-DETR detection size", id="unknown-size"),
        pytest.param({"family": "detectron"}, "family", id="unknown-family"),
        pytest.param({"model": "yolo26n.yaml"}, "set train.model: rfdetr-nano", id="model-not-the-size"),
        pytest.param(
            {"model": "rfdetr-nano", "rfdetr": {"size": "small"}},
            "set train.model: rfdetr-small",
            id="model-other-size",
        ),
        pytest.param({"rfdetr": {"extra_args": {"lr": 1e-3}}}, r"lr \(use train.rfdetr.lr\)", id="extra-args-owned-lr"),
        pytest.param({"rfdetr": {"extra_args": {"mlflow": True}}}, "mlflow", id="extra-args-own-mlflow"),
        pytest.param({"rfdetr": {"workers": -1}}, "workers", id="negative-workers"),
    ],
)
def test_rfdetr_settings_that_cannot_work_fail_at_load(train, problem):
    with pytest.raises(ConfigError, match=problem) as failed:
        rfdetr_params(**train)
    if problem.startswith("size") or "detection size" in problem:
        assert ", ".join(RFDETR_OFFLINE_SIZES) in str(failed.value)  # names the sizes that work


@pytest.mark.parametrize("size", RFDETR_OFFLINE_SIZES)
def test_every_offline_size_loads_and_states_its_weights_license(size):
    params = rfdetr_params(model=f"rfdetr-{size}", rfdetr={"size": size})
    stated = family(params).weights_license(params)
    assert (stated.license, stated.source) == ("Apache-2.0", f"family rfdetr (size {size})")


def test_the_size_table_matches_the_config_and_rfdetr():
    import rfdetr as rf

    assert tuple(rfdetr_net.SIZES) == RFDETR_OFFLINE_SIZES
    for size in rfdetr_net.SIZES.values():
        builder = getattr(rf, size.builder)
        config = object.__new__(builder).get_model_config()  # the config its constructor builds
        assert config.patch_size * config.num_windows == size.block


@pytest.mark.parametrize(
    "imgsz, ok",
    [pytest.param(160, True, id="160"), pytest.param(64, True, id="64"), pytest.param(100, False, id="100")],
)
def test_the_resolution_must_be_a_multiple_of_the_block(imgsz, ok):
    params = rfdetr_params()
    params = params.model_copy(update={"base": params.base.model_copy(update={"imgsz": imgsz})})
    if ok:
        assert rfdetr_net.size_of(params).block == 32
    else:
        with pytest.raises(ConfigError, match=r"base.imgsz 100: .* multiple of 32 \(e.g. 96 or 128\)"):
            rfdetr_net.size_of(params)


# ------------------------------------------------------------------ the COCO view of the YOLO layout


def yolo_set(root: Path, labels: dict[str, str], size: tuple[int, int] = (40, 20)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, text in labels.items():
        Image.new("RGB", size).save(root / "images" / f"{stem}.png")
        (root / "labels" / f"{stem}.txt").write_text(text)
    return root / "images"


def test_the_coco_view_links_images_and_keeps_repeats(tmp_path):
    images = yolo_set(tmp_path / "src", {"a": "1 0.5 0.5 0.5 0.5\n0 0.25 0.5 0.5 1.0\n", "b": ""})
    listing = tmp_path / "train.txt"
    listing.write_text(f"{images / 'a.png'}\n{images / 'a.png'}\n{images / 'b.png'}\n")  # a repeated: weighted
    root = rfdetr_coco.write_coco_view(TrainData(train=listing, val=images, classes=CLASSES), tmp_path / "view")

    train = json.loads((root / "train" / rfdetr_coco.ANNOTATIONS).read_text())
    assert [img["file_name"] for img in train["images"]] == ["0000000_a.png", "0000001_a.png", "0000002_b.png"]
    assert len({img["id"] for img in train["images"]}) == 3
    links = sorted((root / "train").glob("*.png"))
    assert all(p.is_symlink() and p.resolve() == (images / p.name[8:]).resolve() for p in links)  # no copies
    assert [c["id"] for c in train["categories"]] == [0, 1, 2]
    first = [a for a in train["annotations"] if a["image_id"] == 0]
    assert [(a["category_id"], a["bbox"]) for a in first] == [(1, [10.0, 5.0, 20.0, 10.0]), (0, [0.0, 0.0, 20.0, 20.0])]
    assert not [a for a in train["annotations"] if a["image_id"] == 2]  # the empty label file: no boxes
    assert len(train["annotations"]) == 4 and len({a["id"] for a in train["annotations"]}) == 4
    valid = json.loads((root / "valid" / rfdetr_coco.ANNOTATIONS).read_text())
    assert [img["file_name"] for img in valid["images"]] == ["0000000_a.png", "0000001_b.png"]
    assert (root / "test").resolve() == (root / "valid").resolve()
    # the same view again (a rerun) replaces the old one
    rfdetr_coco.write_coco_view(TrainData(train=images, val=images, classes=CLASSES), tmp_path / "view")
    assert len(json.loads((root / "train" / rfdetr_coco.ANNOTATIONS).read_text())["images"]) == 2


@pytest.mark.parametrize(
    "labels, problem",
    [
        pytest.param({"a": "7 0.5 0.5 0.1 0.1\n"}, r"a.txt line 1: class 7 not in classes", id="class-out-of-range"),
        pytest.param({"a": None}, "label file missing", id="no-label-file"),
    ],
)
def test_the_coco_view_refuses_bad_labels_naming_the_file(tmp_path, labels, problem):
    images = yolo_set(tmp_path / "src", {k: v or "" for k, v in labels.items()})
    for stem, text in labels.items():
        if text is None:
            (tmp_path / "src" / "labels" / f"{stem}.txt").unlink()
    with pytest.raises(DatasetError, match=problem):
        rfdetr_coco.write_coco_view(TrainData(train=images, val=images, classes=CLASSES), tmp_path / "view")


def test_an_image_outside_an_images_folder_has_no_labels(tmp_path):
    with pytest.raises(DatasetError, match="not inside an images/ folder"):
        rfdetr_coco.label_path(tmp_path / "photos" / "a.png")
    assert rfdetr_coco.label_path(Path("/d/images/x/images/a.png")) == Path("/d/images/x/labels/a.txt")


# ------------------------------------------------------------------ checkpoints: told apart, never unpickled


def save(path: Path, payload: object) -> Path:
    torch.save(payload, path)
    return path


@pytest.fixture
def checkpoints(tmp_path) -> dict[str, Path]:
    ours = rfdetr_net.write_checkpoint(
        tmp_path / "rfdetr.pt", state_dict={"w": torch.zeros(4)}, size="nano", classes=CLASSES, resolution=64
    )
    data = ours.read_bytes()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cut_head = tmp_path / "cut_head.pt"
    cut_head.write_bytes(data[:40])
    return {
        "rfdetr": ours,
        # Ultralytics saves a dict whose first key is "date" (then the pickled model object)
        "ultralytics": save(tmp_path / "yolo.pt", {"date": "2026-12-01", "model": {"w": torch.zeros(2)}}),
        "other-object-first": save(tmp_path / "obj.pt", torch.zeros(3)),
        "garbage": garbage,
        "cut-head": cut_head,
        "empty": save(tmp_path / "empty.pt", {}),
        "missing": tmp_path / "absent.pt",
    }


@pytest.mark.parametrize(
    "name, declared, yolo_claims",
    [
        pytest.param("rfdetr", "rfdetr", False, id="rfdetr"),
        pytest.param("ultralytics", None, True, id="ultralytics"),
        pytest.param("other-object-first", None, True, id="tensor"),
        pytest.param("garbage", None, True, id="garbage"),
        pytest.param("cut-head", None, True, id="cut-in-the-head"),
        pytest.param("empty", None, True, id="empty-dict"),
        pytest.param("missing", None, True, id="missing-file"),
    ],
)
def test_the_sniff_tells_the_families_apart(checkpoints, name, declared, yolo_claims):
    path = checkpoints[name]
    assert declared_family(path) == declared
    assert rfdetr.CHECKPOINT_LOADER[0](path) is (declared == "rfdetr")
    assert yolo.CHECKPOINT_LOADER[0](path) is yolo_claims  # yolo takes every .pt no family declares


def test_the_sniff_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    path = save(tmp_path / "evil.pt", {FAMILY_KEY: "rfdetr", "x": Boom()})
    assert declared_family(path) == "rfdetr"
    assert not (tmp_path / "ran").exists()


def test_a_truncated_checkpoint_is_reported_as_such(checkpoints, tmp_path):
    data = checkpoints["rfdetr"].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert declared_family(cut) == "rfdetr"  # its head survives: its own loader reports it
    with pytest.raises(
        rfdetr_net.CheckpointError, match=rf"cut.pt \({cut.stat().st_size} bytes\): truncated or corrupt"
    ):
        rfdetr_net.read_checkpoint(cut)
    with pytest.raises(rfdetr_net.CheckpointError, match="missing"):
        rfdetr_net.read_checkpoint(checkpoints["empty"])


def test_the_loader_checks_trust_before_it_opens(checkpoints, tmp_path):
    data = checkpoints["rfdetr"].read_bytes()
    cut = tmp_path / "best.pt"
    cut.write_bytes(data[: len(data) // 2])
    family(rfdetr_params())
    assert detectors.LOADERS.count(rfdetr.CHECKPOINT_LOADER) == 1
    with pytest.raises(UntrustedCheckpointError, match="not produced by this project"):
        load_detector(cut, InferenceSettings(imgsz=64))
    family(rfdetr_params(trusted_checkpoints=[file_sha256(cut)]))
    with pytest.raises(rfdetr_net.CheckpointError, match="truncated or corrupt"):
        load_detector(cut, InferenceSettings(imgsz=64))


def test_rfdetr_own_truncated_file_is_reported_as_such(tmp_path):
    """rfdetr's own loader says to pass ``trust_checkpoint`` for a damaged file; the family says what is wrong."""
    foreign = tmp_path / "weights" / "checkpoint_best_total.pth"
    foreign.parent.mkdir()
    save(foreign, {"model": {"class_embed.bias": torch.zeros(4)}, "args": {}})
    foreign.write_bytes(foreign.read_bytes()[:300])
    with pytest.raises(
        rfdetr_net.CheckpointError, match=r"checkpoint_best_total.pth \(300 bytes\): truncated or corrupt"
    ):
        rfdetr_net.build_model("nano", num_classes=3, resolution=64, pretrain_weights=foreign)


# ------------------------------------------------------------------ the exported layout and its head


class FakeNet(torch.nn.Module):
    """LW-DETR's export forward: (boxes (B, Q, 4) normalised cxcywh, logits (B, Q, C + 1)), from fixed outputs."""

    num_queries = 2

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(x)
        boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25], [0.25, 0.25, 0.1, 0.1]]]).expand(len(x), -1, -1)
        # query 0: class 1 high; query 1: class 0 middling; the last logit (background) highest of all: dropped
        logits = torch.tensor([[[-9.0, 4.0, -9.0, -9.0, 9.0], [0.0, -9.0, -9.0, -9.0, 9.0]]]).expand(len(x), -1, -1)
        return boxes, logits


def test_the_decoded_layout_is_the_one_every_family_exports():
    net = FakeNet()
    module = rfdetr_net.decoded_module(net, num_classes=4, resolution=64, top_k=3)
    images = torch.full((2, 3, 64, 64), 0.5)
    rows = module(images).numpy()
    assert rows.shape == (2, 3, 6)
    np.testing.assert_allclose(rows[0, 0], [16, 24, 48, 40, 1 / (1 + np.exp(-4.0)), 1], rtol=1e-5)
    np.testing.assert_allclose(rows[0, 1], [12.8, 12.8, 19.2, 19.2, 0.5, 0], rtol=1e-5)
    assert set(rows[0, :, 5]) <= {0.0, 1.0, 2.0, 3.0}  # never the background index 4
    normalised = net.seen[0][0, :, 0, 0].numpy()
    np.testing.assert_allclose(normalised, (0.5 - np.array(rfdetr_net.MEANS)) / np.array(rfdetr_net.STDS), rtol=1e-5)
    decoded = detectors.decode_output(rows, [detectors.Letterbox(1.0, 0, 0, 64, 64)] * 2, InferenceSettings(imgsz=64))
    assert decoded[0].class_id.tolist() == [1, 0] and decoded[0].boxes_xyxy[0].tolist() == [16, 24, 48, 40]


HEAD_NAMES = [
    "/net/backbone/0/encoder/MatMul",
    "/net/transformer/decoder/layers.0/Add",
    "/net/transformer/enc_out_class_embed.0/MatMul",
    "/net/class_embed/MatMul",
    "/net/bbox_embed/layers.0/MatMul",
    "/net/Exp",
    "/TopK",
    "/Sigmoid",
]


@pytest.mark.parametrize(
    "names, expected",
    [
        pytest.param(HEAD_NAMES, set(HEAD_NAMES[2:]), id="heads-and-decoding"),
        pytest.param([n.lstrip("/") for n in HEAD_NAMES], {n.lstrip("/") for n in HEAD_NAMES[2:]}, id="no-slash"),
        pytest.param([*HEAD_NAMES[:2], "/TopK"], None, id="no-heads"),
        pytest.param(["/model.22/Conv"], None, id="a-yolo-graph"),
        pytest.param([], None, id="empty"),
    ],
)
def test_head_nodes_are_the_heads_and_the_decoding(names, expected):
    if expected is None:
        with pytest.raises(ValueError, match="cannot locate the RF-DETR heads"):
            FAMILIES["rfdetr"].head_nodes(names)
    else:
        assert FAMILIES["rfdetr"].head_nodes(names) == frozenset(expected)


def test_a_graph_without_heads_cannot_be_quantized_with_its_head_kept():
    """The INT8 builders ask the family for the head; without one they fail and the export records why."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="/model.0/conv/Conv")]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    with pytest.raises(ValueError, match="keep_head_fp32: false"):
        quantize.onnx_fp32_head_nodes(model, FAMILIES["rfdetr"].head_nodes)


# ------------------------------------------------------------------ metrics


def test_metrics_get_family_neutral_names():
    logged = {
        "val/mAP_50_95": torch.tensor(0.25),
        "val/mAP_50": 0.5,
        "val/ema_mAP_50_95": 0.3,
        "val/precision": 0.4,
        "val/F1": 0.1,
        "train/loss": 12.0,
        "train/loss_ce": 1.0,
        "train/class_error": 50.0,
        "train/lr": 1e-4,
        "loss": 3.0,
        "val/recall": float("nan"),
    }
    assert rfdetr.neutral_metrics(logged) == {
        "val/mAP50-95": 0.25,
        "val/mAP50": 0.5,
        "val/ema_mAP50-95": 0.3,
        "val/precision": 0.4,
        "train/total_loss": 12.0,
        "train/ce_loss": 1.0,
        "lr/pg0": 1e-4,
    }


@pytest.mark.parametrize(
    "source, expected",
    [
        pytest.param("ema", {"val/mAP50-95": 0.5, "val/ema_mAP50-95": 0.5, "val/mAP50": 0.2}, id="ema-best"),
        pytest.param("regular", {"val/mAP50-95": 0.3, "val/ema_mAP50-95": 0.1, "val/mAP50": 0.6}, id="regular"),
    ],
)
def test_the_final_metrics_are_the_best_epochs(source, expected):
    rows = [
        {"epoch": 1.0, "val/mAP50-95": 0.3, "val/ema_mAP50-95": 0.1, "val/mAP50": 0.6, "train/loss": 9.0},
        {"epoch": 2.0, "val/mAP50-95": 0.2, "val/ema_mAP50-95": 0.5, "val/mAP50": 0.2, "train/loss": 8.0},
    ]
    assert rfdetr._final_metrics(rows, source) == expected
    assert rfdetr._final_metrics([], source) == {}


def test_rfdetr_args_carry_the_settings(tmp_path):
    params = rfdetr_params(epochs=3, batch=4, patience=2, rfdetr={"lr": 2e-4, "extra_args": {"multi_scale": True}})
    args = rfdetr.rfdetr_args(params, dataset_dir=tmp_path / "d", output_dir=tmp_path / "o")
    assert {k: args[k] for k in ("epochs", "batch_size", "resolution", "lr", "multi_scale", "early_stopping")} == {
        "epochs": 3,
        "batch_size": 4,
        "resolution": params.base.imgsz,
        "lr": 2e-4,
        "multi_scale": True,
        "early_stopping": True,
    }
    assert not args["mlflow"] and not args["tensorboard"] and "lr_encoder" not in args


# ------------------------------------------------------------------ the warm start


def test_a_warm_start_begins_from_the_checkpoint_weights(tmp_path):
    params = rfdetr_params(rfdetr={"size": "nano"})
    params = params.model_copy(update={"base": params.base.model_copy(update={"imgsz": 64})})
    classes = params.base.classes
    trained = rfdetr_net.build_model("nano", num_classes=len(classes), resolution=64).model.model.state_dict()
    source = rfdetr_net.write_checkpoint(
        tmp_path / "best.pt", state_dict=trained, size="nano", classes=classes, resolution=64
    )
    trust = {"trusted_checkpoints": [file_sha256(source)], "weights": source}
    warm = params.model_copy(update={"train": params.train.model_copy(update=trust)})
    handed = rfdetr._warm_start_file(warm, tmp_path, registered=None)
    assert handed is not None and handed.parent == tmp_path
    started = rfdetr_net.build_model("nano", num_classes=len(classes), resolution=64, pretrain_weights=handed)
    state = started.model.model.state_dict()
    floats = [k for k, v in trained.items() if v.is_floating_point() and v.numel() > 1]
    assert floats and all(torch.equal(state[k], trained[k]) for k in floats)

    other = warm.model_copy(update={"base": warm.base.model_copy(update={"classes": ["a", "b"]})})
    with pytest.raises(rfdetr_net.CheckpointError, match=r"cannot warm-start from it: classes"):
        rfdetr._warm_start_file(other, tmp_path, registered=None)
    untrusted = params.model_copy(update={"train": params.train.model_copy(update={"weights": source})})
    with pytest.raises(UntrustedCheckpointError):
        rfdetr._warm_start_file(untrusted, tmp_path, registered=None)
