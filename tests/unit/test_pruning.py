"""The compress settings and the pruning arithmetic: what is refused at config time, what torch-pruning would keep.

The network-level behaviour (a real YOLO26n pruned and fine-tuned) is ``tests/integration/test_compress.py``; here a
small convolutional network stands in where a graph is needed, so the rules run in well under a second.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from tasks.config import ConfigError, load_params
from tasks.env import PROJECT_ROOT
from tasks.models.pruning import (
    Prunable,
    UnreachableTarget,
    ZeroChannelsError,
    check_channels,
    clone,
    kept_channels,
    prune,
    ratio_for_macs,
)


def _params_with(tmp_path, **compress):
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data["compress"].update(compress)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_params(path)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"ratio": 1.0, "macs_reduction": None}, r"compress.ratio = 1.0 would leave every prunable layer with zero"),
        ({"ratio": None, "macs_reduction": 1.0}, r"compress.macs_reduction = 1.0 would leave every prunable layer"),
        ({"ratio": 0.0, "macs_reduction": None}, r"compress.ratio = 0.0 prunes nothing"),
        ({"ratio": 0.3, "macs_reduction": 0.4}, r"set exactly one of ratio \(0.3\) and macs_reduction \(0.4\)"),
        ({"ratio": None, "macs_reduction": None}, r"set exactly one of ratio"),
        ({"round_to": 0}, r"compress.round_to"),
        ({"fine_tune_args": {"epochs": 3}}, r"stage owns: epochs \(set by compress.epochs"),
        ({"fine_tune_args": {"data": "x.yaml"}}, r"fine_tune_args sets what the stage owns: data"),
        ({"fine_tune_args": {"lr0": 0.0005}}, r"lr0 = 0.0005 would be ignored with optimizer 'auto'"),
    ],
)
def test_settings_that_cannot_work_are_refused_when_params_load(tmp_path, settings, match):
    with pytest.raises(ConfigError, match=match):
        _params_with(tmp_path, **settings)


def test_the_fine_tune_may_name_its_own_optimizer_and_schedule(tmp_path):
    args = {"optimizer": "AdamW", "lr0": 0.0005, "warmup_epochs": 0, "close_mosaic": 0}
    assert _params_with(tmp_path, fine_tune_args=args).compress.fine_tune_args == args


def test_the_project_params_leave_compress_off(tmp_path):
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert not params.compress.enabled and params.compress.macs_reduction == 0.4 and params.compress.ratio is None


@pytest.mark.parametrize(
    ("channels", "ratio", "round_to", "kept"),
    [
        (64, 0.25, 1, 48),
        (64, 0.3, 8, 40),  # int(44.8) = 44, rounded down to 40
        (16, 0.6, 8, 0),  # int(6.4) = 6: below one multiple of 8
        (16, 0.5, 8, 8),
        (8, 0.05, 8, 0),  # a small ratio still prunes one of 8, and 7 rounds down to none
        (20, 0.02, 8, 16),  # int(19.6) = 19, rounded down to 16
        (3, 0.2, 1, 2),
    ],
)
def test_kept_channels_follow_torch_prunings_arithmetic(channels, ratio, round_to, kept):
    assert kept_channels(channels, ratio, round_to) == kept


def test_a_ratio_that_empties_a_layer_names_it():
    with pytest.raises(ZeroChannelsError, match=r"leaves 1 layer\(s\) with zero channels: stem \(16 channels\)"):
        check_channels({"stem": 16, "body": 64}, 0.6, 8)
    check_channels({"stem": 16, "body": 64}, 0.5, 8)  # 8 and 32 kept: fine


class _Net(nn.Module):
    """Conv stem, a residual pair (its channels tied by the add), and a 1x1 head whose outputs must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 64, 3, padding=1)
        self.head = nn.Conv2d(64, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.a(x))
        return self.head(torch.relu(self.b(x)))


def _prunable() -> Prunable:
    torch.manual_seed(0)
    net = _Net().eval()
    return Prunable(net, torch.zeros(1, 3, 16, 16), [net.head], "head outputs")


def test_pruning_removes_channels_everywhere_but_the_kept_outputs():
    network = _prunable()
    result = prune(network, 0.5, 1)
    assert network.module.head.out_channels == 5, "kept outputs stay"
    assert network.module.stem.out_channels == 16 and network.module.a.out_channels == 16, "tied by the add: together"
    assert network.module.b.out_channels == 32 and network.module.head.in_channels == 32
    assert result.macs_after < 0.4 * result.macs_before and result.params_after < result.params_before
    assert network.module(network.example).shape == (1, 5, 16, 16)


def test_a_macs_target_is_searched_on_copies():
    source = _prunable()
    pruned, result = ratio_for_macs(source, 0.5, 1)
    assert 1 - result.macs_kept >= 0.5
    assert source.module.stem.out_channels == 32, "the source is left as it was"
    assert pruned.module.stem.out_channels < 32 and 0 < result.ratio < 0.5
    loose, _ = ratio_for_macs(clone(source), 0.2, 1)
    assert loose.module.stem.out_channels > pruned.module.stem.out_channels, "a smaller target prunes less"


def test_an_unreachable_macs_target_is_refused():
    with pytest.raises(UnreachableTarget, match=r"compress.macs_reduction 99% cannot be reached"):
        ratio_for_macs(_prunable(), 0.99, 16)


def test_a_layer_of_round_to_channels_or_fewer_stays_whole():
    network = _prunable()
    result = prune(network, 0.5, 32)  # stem and a: 32 channels, nothing smaller to keep at multiples of 32
    assert network.module.stem.out_channels == 32 and network.module.a.out_channels == 32
    assert network.module.b.out_channels == 32, "b's 64 channels halve to one multiple of 32"
    assert sorted(result.layers.values()) == [(32, 32), (64, 32)]
