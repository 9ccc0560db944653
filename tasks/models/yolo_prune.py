"""The YOLO family's side of the compress stage: a prunable module from a checkpoint, and the fine-tune after it.

:func:`prunable` opens a recorded checkpoint and rewrites what torch-pruning's dependency graph cannot follow:
every C2f block (C3k2 in YOLO26) splits one convolution's output into two halves with ``chunk``; :class:`SplitC2f`
computes the same halves with two convolutions (the first and second half of the original's filters, bit for bit
the same weights), so each half is pruned on its own. What stays whole: the last convolution of every detection-head
tower (its outputs are the box distances and the class logits), and the attention blocks (C2PSA, PSABlock: the graph
would cut heads apart). Everything else, the head towers' hidden channels included, may be pruned.

:func:`fine_tune` trains the pruned module with Ultralytics' own trainer on the train stage's data, for
``compress.epochs``; with ``compress.distill`` the detection loss gets a logit-distillation term from the unpruned
model (both heads: the class logits against the teacher's probabilities, the box distances against the teacher's,
weighted by the teacher's confidence). A loss that stops being finite ends it (:class:`FineTuneDiverged`).

The checkpoint a fine-tune writes pickles :class:`SplitC2f` by this module's path: it must stay importable here.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.config import Params
from tasks.contracts.checkpoints import require_trusted, trusted_checkpoints
from tasks.models.base import EpochLogger, Fitted, TrainData
from tasks.models.pruning import FineTuneDiverged, Prunable

log = logging.getLogger(__name__)

_GRAPH_ATTRS = ("f", "i", "type", "np")  # what Ultralytics' DetectionModel routes each layer by


class SplitC2f(nn.Module):
    """A C2f block whose ``cv1`` is two convolutions (``cv0``: first half of the filters, ``cv1``: second half).

    Same outputs as the block it replaces (``cv1(x).chunk(2, 1)`` is ``cv0(x), cv1(x)``); prunable per half.
    """

    def __init__(self, block: Any) -> None:
        super().__init__()
        half = block.c
        self.c = half
        self.cv0 = _half_of(block.cv1, slice(0, half))
        self.cv1 = _half_of(block.cv1, slice(half, 2 * half))
        self.cv2 = block.cv2
        self.m = block.m
        for name in _GRAPH_ATTRS:
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _half_of(conv_block: Any, half: slice) -> nn.Module:
    """An Ultralytics ``Conv`` (conv + BN + activation) keeping the output channels ``half`` of ``conv_block``."""
    out: Any = copy.deepcopy(conv_block)
    conv: Any = conv_block.conv
    bn: Any = conv_block.bn
    channels = half.stop - half.start
    out.conv = nn.Conv2d(
        conv.in_channels,
        channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    out.conv.weight.data = conv.weight.data[half].clone()
    if conv.bias is not None:
        out.conv.bias.data = conv.bias.data[half].clone()
    out.bn = nn.BatchNorm2d(channels, eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(out.bn, name).data = getattr(bn, name).data[half].clone()
    out.bn.num_batches_tracked = bn.num_batches_tracked.clone()
    return out


def split_blocks(module: nn.Module) -> int:
    """Replace every C2f-family block under ``module`` by a :class:`SplitC2f`, in place; how many were replaced."""
    from ultralytics.nn.modules.block import C2f

    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, C2f):
            setattr(module, name, SplitC2f(child))
            replaced += 1
        else:
            replaced += split_blocks(child)
    return replaced


def kept_whole(net: nn.Module) -> list[nn.Module]:
    """The modules whose output channels stay: each head tower's last convolution, and the attention blocks."""
    from ultralytics.nn.modules import Detect
    from ultralytics.nn.modules.block import C2PSA, PSABlock

    keep: list[nn.Module] = []
    for module in net.modules():
        if isinstance(module, Detect):
            for towers in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
                keep += [tower[-1] for tower in getattr(module, towers, None) or ()]
        elif isinstance(module, C2PSA | PSABlock):
            keep.append(module)
    return keep


def load_net(checkpoint: Path, params: Params) -> nn.Module:
    """The checkpoint's network (FP32, eval mode), opened only when the project recorded it."""
    from tasks.models.yolo_train import configure_ultralytics

    require_trusted(checkpoint, trusted_checkpoints(params))
    configure_ultralytics()
    from ultralytics import YOLO

    net: Any = YOLO(str(checkpoint)).model
    return net.float().eval()


def prunable(checkpoint: Path, params: Params) -> Prunable:
    """The checkpoint's network ready for :func:`tasks.models.pruning.prune`: C2f blocks split, what stays named."""
    net = load_net(checkpoint, params)
    split_blocks(net)
    example = torch.zeros(1, 3, params.base.imgsz, params.base.imgsz)
    return Prunable(net, example, kept_whole(net), "detection-head outputs (box distances, class logits); attention")


class DistillLoss:
    """The detection loss plus ``weight`` x logit distillation from ``teacher`` (both heads, every anchor).

    Class logits: binary cross-entropy against the teacher's probabilities, over the teacher's summed probability
    (as Ultralytics normalises its own class loss); box distances: L1 per anchor weighted by the teacher's top class
    probability. Everything else (``update``, ``updates``) is the wrapped loss's.
    """

    def __init__(self, base: Any, teacher: nn.Module, weight: float) -> None:
        self.base, self.teacher, self.weight = base, teacher, weight

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["base"], name)

    def __call__(self, preds: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Any]:
        loss, items = self.base(preds, batch)
        with torch.no_grad():
            _, taught = self.teacher(batch["img"])
        heads = ("one2many", "one2one") if "one2many" in preds else (None,)
        distill = sum(_head_distill(preds[h] if h else preds, taught[h] if h else taught) for h in heads)
        return loss.sum() + self.weight * distill * batch["img"].shape[0], items


def _head_distill(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]) -> torch.Tensor:
    probs = teacher["scores"].sigmoid()  # (B, classes, anchors)
    cls = nn.functional.binary_cross_entropy_with_logits(student["scores"], probs, reduction="sum")
    cls = cls / probs.sum().clamp(min=1.0)
    confidence = probs.amax(1)  # (B, anchors)
    box = (student["boxes"] - teacher["boxes"]).abs().mean(1)  # (B, anchors)
    box = (box * confidence).sum() / confidence.sum().clamp(min=1e-6)
    return cls + box


# long: one Ultralytics trainer set up around the pruned module: its callbacks share the run's state
def fine_tune(
    params: Params,
    *,
    module: nn.Module,
    teacher: Path | None,
    data: TrainData,
    out_dir: Path,
    on_epoch: EpochLogger,
) -> Fitted:
    """Fine-tune the pruned ``module`` for ``compress.epochs`` on ``data`` (distilling from ``teacher`` if given).

    Raises:
        FineTuneDiverged: the mean training loss of an epoch was not finite.
    """
    from tasks.models.yolo_train import (
        configure_ultralytics,
        epoch_callbacks,
        neutral_metrics,
        ultralytics_args,
        write_data_yaml,
    )

    configure_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    cfg = params.compress
    teacher_net = load_net(teacher, params) if teacher is not None and cfg.distill else None
    if teacher_net is not None:
        for p in teacher_net.parameters():
            p.requires_grad_(False)

    class PrunedTrainer(DetectionTrainer):
        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
            for p in module.parameters():
                p.requires_grad_(True)
            return module

    data_yaml = write_data_yaml(out_dir / "data.yaml", data)
    args = ultralytics_args(params, data_yaml=data_yaml, scratch=out_dir / "ultralytics")
    args |= cfg.fine_tune_args  # checked against what the stage owns when params load (train.yolo)
    args |= {"model": params.train.model, "epochs": cfg.epochs, "patience": cfg.epochs, "pretrained": True}
    trainer = PrunedTrainer(overrides=args)

    def _distil(trainer: Any) -> None:  # after the EMA copy is made: the teacher never lands in a checkpoint
        if teacher_net is not None:
            net = trainer.model
            net.criterion = DistillLoss(net.init_criterion(), teacher_net, cfg.distill_weight)

    def _finite(trainer: Any) -> None:
        losses = trainer.tloss.values() if isinstance(trainer.tloss, Mapping) else [trainer.tloss]
        if not all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in losses if v is not None):
            raise FineTuneDiverged(
                f"compress fine-tune diverged at epoch {trainer.epoch + 1}: mean training loss {trainer.tloss}"
            )

    choose, epoch_end = epoch_callbacks(params, epochs=cfg.epochs, on_epoch=on_epoch)
    trainer.add_callback("on_train_start", _distil)
    trainer.add_callback("on_train_epoch_end", _finite)
    trainer.add_callback("on_train_epoch_end", choose)
    trainer.add_callback("on_fit_epoch_end", epoch_end)
    trainer.train()
    best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
    metrics = neutral_metrics(trainer.metrics)
    if any(not math.isfinite(v) for v in metrics.values()):
        raise FineTuneDiverged(f"compress fine-tune ended with non-finite metrics {metrics}")
    results = best.parent.parent / "results.csv"
    return Fitted(best, metrics, (results,) if results.is_file() else ())
