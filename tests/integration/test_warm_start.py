"""A warm start really begins from the checkpoint's weights; a scratch run from the yaml's fresh ones.

Ultralytics rebuilds the architecture from the yaml whenever ``pretrained`` is False, even for a model loaded from
a ``.pt``: the loop's retraining would silently start from scratch. This test looks at the weights the trainer
holds when training starts.
"""

from __future__ import annotations

import pytest
import torch

from tasks import train, world
from tasks.config import Params
from tasks.models.yolo import configure_ultralytics, ultralytics_args

pytestmark = pytest.mark.integration


class _Started(Exception):
    """Raised from the first callback: the test only needs the weights training starts from."""


def _start_weights(params: Params, scratch) -> dict[str, torch.Tensor]:
    configure_ultralytics()
    from ultralytics import YOLO

    captured: dict[str, torch.Tensor] = {}

    def grab(trainer) -> None:
        captured.update({k: v.detach().float().clone() for k, v in trainer.model.state_dict().items()})
        raise _Started

    cfg = params.train
    model = YOLO(str(cfg.weights) if cfg.weights else cfg.model)
    model.add_callback("on_train_start", grab)
    data_yaml = params.base.paths.models / "train" / "data.yaml"
    with pytest.raises(_Started):
        model.train(**ultralytics_args(params, data_yaml=data_yaml, scratch=scratch))
    return captured


def test_warm_start_begins_from_the_checkpoint(tiny_params, tmp_path):
    world.run(tiny_params)
    trained = train.run(tiny_params)  # 1 epoch from the yaml: the "champion"
    ckpt = torch.load(trained.weights, map_location="cpu", weights_only=False)
    reference = {k: v.float() for k, v in (ckpt.get("ema") or ckpt["model"]).state_dict().items()}

    warm = tiny_params.model_copy(update={"train": tiny_params.train.model_copy(update={"weights": trained.weights})})
    started = _start_weights(warm, tmp_path / "warm")
    floats = [k for k, v in reference.items() if v.is_floating_point() and k in started and v.numel() > 1]
    assert floats
    assert all(torch.allclose(started[k], reference[k], atol=1e-3) for k in floats)

    fresh = _start_weights(tiny_params, tmp_path / "scratch")
    differ = sum(not torch.allclose(fresh[k], reference[k], atol=1e-3) for k in floats)
    assert differ > len(floats) // 2  # the scratch run does not start from the checkpoint
