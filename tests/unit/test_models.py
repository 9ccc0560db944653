"""The model-family protocol and the YOLO family: params that take effect, the head finder, metric names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from onnx import helper

from tasks import train
from tasks.config import ConfigError, Params, YoloParams, load_params
from tasks.contracts.checkpoints import UntrustedCheckpointError
from tasks.core.hashing import file_sha256
from tasks.env import PROJECT_ROOT
from tasks.models import FAMILIES, family, yolo, yolo_train
from tasks.runtimes import detectors
from tasks.runtimes.detectors import InferenceSettings, load_detector
from tasks.targets import quantize


def params_with(**yolo_settings) -> Params:
    return load_params(PROJECT_ROOT / "params.yaml", overrides={"train": {"yolo": yolo_settings}})


# ------------------------------------------------------------------ params: every key takes effect


@pytest.mark.parametrize(
    "settings, problem",
    [
        pytest.param({"lr0": 0.01}, "would be ignored", id="lr0-with-auto-optimizer"),
        pytest.param({"extra_args": {"lr0": 0.02}}, r"lr0 \(use train.yolo.lr0\)", id="extra-args-owned-lr0"),
        pytest.param({"extra_args": {"epochs": 3}}, r"epochs \(use train.epochs\)", id="extra-args-owned-epochs"),
        pytest.param({"optimizer": "Lion"}, "optimizer", id="unknown-optimizer"),
        pytest.param({"workers": -1}, "workers", id="negative-workers"),
        pytest.param({"val_every": 0}, "val_every", id="val-every-zero"),
        pytest.param({"extra_args": {"val": False}}, r"val \(use train.yolo.val_every\)", id="extra-args-owned-val"),
        pytest.param({"extra_args": {"cache": "ram"}}, r"cache \(use train.yolo.cache_ram\)", id="extra-args-cache"),
    ],
)
def test_yolo_settings_that_would_do_nothing_fail_at_load(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        params_with(**settings)


@pytest.mark.parametrize(
    "settings, expected",
    [
        pytest.param({}, {"optimizer": "auto", "workers": 0, "val": True, "cache": "ram"}, id="defaults"),
        pytest.param({"cache_ram": False}, {"cache": False}, id="images-read-each-epoch"),
        pytest.param({"optimizer": "SGD", "lr0": 0.02}, {"optimizer": "SGD", "lr0": 0.02}, id="named-optimizer-lr0"),
        pytest.param({"optimizer": "AdamW"}, {"optimizer": "AdamW"}, id="named-optimizer-default-lr0"),
        pytest.param({"extra_args": {"mosaic": 0.0}}, {"mosaic": 0.0}, id="extra-args-pass-through"),
    ],
)
def test_ultralytics_args_carry_the_settings(settings, expected, tmp_path):
    args = yolo.ultralytics_args(params_with(**settings), data_yaml=tmp_path / "data.yaml", scratch=tmp_path)
    assert {key: args.get(key) for key in expected} == expected
    assert ("lr0" in args) == ("lr0" in settings)  # absent: Ultralytics' own default (or its auto choice)


@pytest.mark.parametrize(
    ("epochs", "every", "validated"),
    [
        pytest.param(10, 5, [5, 10], id="every-5-of-10"),
        pytest.param(10, 1, list(range(1, 11)), id="every-epoch"),
        pytest.param(7, 3, [3, 6, 7], id="the-last-always"),
        pytest.param(3, 1000, [3], id="only-the-last"),
        pytest.param(1, 5, [1], id="one-epoch"),
        pytest.param(0, 5, [], id="no-epoch"),
    ],
)
def test_the_val_pass_runs_after_every_kth_epoch_and_the_last(epochs, every, validated):
    runs = [e + 1 for e in range(epochs) if yolo.validates_after(e, epochs=epochs, every=every)]
    assert runs == validated


@pytest.mark.parametrize(
    "device, workers, ignored",
    [
        pytest.param("cpu", 0, False, id="cpu-no-workers"),
        pytest.param("cpu", 2, True, id="cpu-workers-ignored"),
        pytest.param("mps", 1, True, id="mps-workers-ignored"),
        pytest.param("cuda:0", 4, False, id="cuda-workers"),
    ],
)
def test_workers_on_a_device_that_loads_in_the_main_process(device, workers, ignored):
    why = YoloParams(workers=workers).ignored_on(device)
    assert (why is not None) == ignored
    if ignored:
        assert "train.yolo.workers" in why and device in why


def test_training_refuses_workers_the_device_would_ignore(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.yolo\.workers = 2 does nothing"):
        params_with(workers=2)  # refused when the params load
    # and by the family, for params changed in code after loading
    cuda = load_params(
        PROJECT_ROOT / "params.yaml", overrides={"train": {"yolo": {"workers": 2}}, "base": {"device": "0"}}
    )
    params = cuda.model_copy(update={"base": cuda.base.model_copy(update={"device": "cpu"})})
    with pytest.raises(ConfigError, match=r"train\.yolo\.workers = 2 does nothing"):
        FAMILIES["yolo"].fit(params, data=None, out_dir=tmp_path, on_epoch=lambda e, m: None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the family table


def test_the_family_comes_from_params_with_its_license_and_hints():
    params = params_with(nms_free=True)
    chosen = family(params)
    assert chosen is FAMILIES[params.train.family]
    assert (chosen.name, chosen.weights_license(params).license) == ("yolo", "AGPL-3.0-only")
    assert chosen.inference_hints(params).nms_free is True
    assert family(params_with()).inference_hints(params_with()).nms_free is False


def test_the_family_opens_its_checkpoints(tmp_path):
    family(params_with())
    family(params_with())  # registering twice adds nothing
    assert detectors.LOADERS.count(yolo.CHECKPOINT_LOADER) == 1
    broken = tmp_path / "best.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(UntrustedCheckpointError, match="not produced by this project"):  # never opened
        load_detector(broken, InferenceSettings(imgsz=64))
    family(
        load_params(PROJECT_ROOT / "params.yaml", overrides={"train": {"trusted_checkpoints": [file_sha256(broken)]}})
    )
    with pytest.raises(ValueError, match="not a loadable Ultralytics checkpoint"):
        load_detector(broken, InferenceSettings(imgsz=64))


# ------------------------------------------------------------------ quantization hints: the head


@pytest.mark.parametrize(
    "names, prefix",
    [
        pytest.param(["/model.0/conv/Conv", "/model.12/Add", "/model.3/Mul", "x"], "/model.12/", id="highest-index"),
        pytest.param(["model.2/Conv", "model.10/Mul"], "/model.10/", id="no-leading-slash"),
        pytest.param(["Conv_0", "Add_1"], None, id="no-ultralytics-names"),
        pytest.param([], None, id="empty"),
    ],
)
def test_head_prefix_is_the_last_ultralytics_module(names, prefix):
    if prefix is None:
        with pytest.raises(ValueError, match="cannot locate the detection head"):
            yolo.head_prefix(names)
    else:
        assert yolo.head_prefix(names) == prefix


def test_head_nodes_keep_the_names_as_given():
    names = ["/model.0/conv/Conv", "model.7/Sigmoid", "/model.7/cv2/Conv", "/model.70/x"]
    assert FAMILIES["yolo"].head_nodes(names) == frozenset({"/model.70/x"})
    assert FAMILIES["yolo"].head_nodes(names[:3]) == frozenset({"model.7/Sigmoid", "/model.7/cv2/Conv"})


def test_head_fp32_nodes_of_a_synthetic_graph():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="/model.0/conv/Conv"),
        helper.make_node("Sigmoid", ["a"], ["b"], name="/model.0/act/Sigmoid"),
        helper.make_node("Conv", ["b", "w"], ["c"], name="/model.7/cv2/Conv"),
        helper.make_node("Sigmoid", ["c"], ["d"], name="/model.7/Sigmoid"),
        helper.make_node("Mul", ["d", "d"], ["y"], name="/model.7/Mul"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    kept = quantize.onnx_fp32_head_nodes(model, FAMILIES["yolo"].head_nodes)
    assert kept == ["/model.7/Sigmoid", "/model.7/Mul"]


# ------------------------------------------------------------------ metric names and the epoch table


def test_epoch_metrics_have_family_neutral_names():
    trainer = SimpleNamespace(
        metrics={"metrics/mAP50-95(B)": 0.5, "metrics/mAP50(B)": 0.7, "val/box_loss": 1.5},
        tloss={"box_loss": 2.0, "cls_loss": 3.0},
        label_loss_items=lambda loss, prefix="train": {f"{prefix}/{k}": v for k, v in loss.items()},
        lr={"lr/pg0": 0.001},
    )
    assert yolo_train._epoch_metrics(trainer) == {
        "val/mAP50-95": 0.5,
        "val/mAP50": 0.7,
        "val/box_loss": 1.5,
        "train/box_loss": 2.0,
        "train/cls_loss": 3.0,
        "lr/pg0": 0.001,
    }
    assert yolo.neutral_metrics(None) == {}


@pytest.mark.parametrize("rows", [[], [{"epoch": 1, "val/mAP50-95": 0.1, "train/box_loss": 2.0}]], ids=["none", "one"])
def test_epoch_table_and_plot(tmp_path: Path, rows):
    table = train.write_epochs(rows, tmp_path / "train_epochs.csv")
    png = train.plot_curves(rows, tmp_path / "train.png")
    if not rows:
        assert table is None and png is None
        return
    assert table.read_text().splitlines() == ["epoch,train/box_loss,val/mAP50-95", "1,2.0,0.1"]
    assert png.is_file()


def test_train_params_are_logged_flat():
    assert train._flat({"epochs": 3, "yolo": {"lr0": None, "extra_args": {}}}) == {
        "epochs": 3,
        "yolo.lr0": None,
        "yolo.extra_args": {},
    }
