"""Structured channel pruning for any family: torch-pruning's dependency graph over a module the family prepared.

Why torch-pruning and not NNCF: NNCF's structured pruning for PyTorch (its ``filter_pruning`` algorithm) was
removed from NNCF 2.x's PyTorch backend and what remains prunes weights in place (sparsity, no smaller layers),
while torch-pruning builds the graph of coupled channels (a residual add, a concat, a depthwise convolution tie
several layers' channels together) by tracing one forward pass and removes whole channels from every coupled layer
at once, leaving an ordinary smaller ``nn.Module``. A family says what it cannot lose (:class:`Prunable`: the
detection head's outputs, attention) and rewrites the operations the graph cannot follow (a ``chunk`` of one
convolution's output into halves is two convolutions for YOLO) before handing the module over.

How many channels go: every prunable group keeps ``int(c * (1 - ratio))`` of its ``c`` channels, rounded down to a
multiple of ``round_to`` (torch-pruning's own arithmetic, :func:`kept_channels`); a group of ``round_to`` channels
or fewer has no smaller multiple to keep and stays whole; a wider group that would keep none is refused before
anything is pruned (:class:`ZeroChannelsError`, naming it). A MACs target is met by searching the
ratio (:func:`ratio_for_macs`) on copies.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from tasks.config import ConfigError, VisionloopError

log = logging.getLogger(__name__)

SEARCH_STEPS = 7  # bisection steps of the ratio search: the ratio to within 0.95 / 128 (< 0.008)
MAX_SEARCH_RATIO = 0.95


class NotPrunable(VisionloopError, ValueError):
    """This family (or this checkpoint) cannot be pruned; the message says why. The compress stage skips."""


class ZeroChannelsError(ConfigError):
    """The ratio (with ``round_to``) would leave a layer with no channel: the settings are refused, layer named."""


class FineTuneDiverged(VisionloopError, RuntimeError):
    """The fine-tune after pruning stopped having a finite loss: the compressed candidate is dropped."""


class UnreachableTarget(ConfigError):
    """No ratio that keeps a channel in every layer removes the MACs share asked for."""


@dataclass
class Prunable:
    """What a family hands the pruner.

    Attributes:
        module: the network, in eval mode, its operations traceable by the dependency graph (the family rewrote
            the ones that were not); pruned in place.
        example: an input of the deployed shape (batch 1, ``base.imgsz``) that the graph is traced with.
        keep: modules whose output channels must not change (the detection head's outputs; attention, whose
            heads the graph does not split), with the reason in ``keep_why``.
        keep_why: why those stay whole, for the report.
    """

    module: Any
    example: Any
    keep: list[Any] = field(default_factory=list)
    keep_why: str = ""


@dataclass(frozen=True)
class PruneResult:
    """What pruning did.

    Attributes:
        ratio: the per-layer ratio applied.
        macs_before, macs_after: multiply-accumulates of one forward pass at the example's shape.
        params_before, params_after: parameter counts.
        layers: per prunable group (its root layer's name): channels before and after.
    """

    ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    layers: dict[str, tuple[int, int]]

    @property
    def macs_kept(self) -> float:
        """``macs_after / macs_before``."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0


def kept_channels(channels: int, ratio: float, round_to: int) -> int:
    """Channels a group of ``channels`` keeps: ``int(channels * (1 - ratio))`` rounded down to ``round_to``.

    The same arithmetic as torch-pruning's local pruning with ``round_to`` (when anything is pruned at all).
    """
    kept = int(channels * (1 - ratio))
    return channels if kept == channels else kept - kept % round_to


def _pruner(prunable: Prunable, ratio: float, round_to: int) -> Any:
    import torch_pruning as tp

    return tp.pruner.MetaPruner(
        prunable.module,
        prunable.example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=list(prunable.keep),
        round_to=round_to if round_to > 1 else None,
        global_pruning=False,
    )


def _roots(pruner: Any) -> dict[str, tuple[Any, int]]:
    """Root layer name -> (module, channels), for every group ``pruner`` may prune."""
    graph = pruner.DG
    found: dict[str, tuple[Any, int]] = {}
    for group in graph.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        module = group[0].dep.target.module
        fn = group[0].dep.handler
        channels = (
            graph.get_out_channels(module) if graph.is_out_channel_pruning_fn(fn) else graph.get_in_channels(module)
        )
        if channels:
            found[graph._module2name.get(module, type(module).__name__)] = (module, int(channels))
    return found


def check_channels(channels: dict[str, int], ratio: float, round_to: int) -> None:
    """Refuse a ratio that leaves a group with zero channels.

    Raises:
        ZeroChannelsError: names every such layer with its channels, the ratio and ``round_to``.
    """
    empty = {name: c for name, c in channels.items() if kept_channels(c, ratio, round_to) == 0}
    if empty:
        shown = ", ".join(f"{name} ({c} channels)" for name, c in sorted(empty.items())[:6])
        raise ZeroChannelsError(
            f"compress: ratio {ratio:.3f} with round_to {round_to} leaves {len(empty)} layer(s) with zero channels: "
            f"{shown}{' ...' if len(empty) > 6 else ''}; each keeps int(channels x (1 - ratio)) rounded down to a "
            f"multiple of round_to: lower compress.ratio / compress.macs_reduction or compress.round_to"
        )


def count(prunable: Prunable) -> tuple[int, int]:
    """MACs and parameters of one forward pass at the example's shape."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(prunable.module, prunable.example)
    return int(macs), int(params)


def prune(prunable: Prunable, ratio: float, round_to: int) -> PruneResult:
    """Prune ``prunable.module`` in place at ``ratio`` (checked first: no layer left empty).

    Raises:
        ZeroChannelsError: see :func:`check_channels`; nothing was pruned.
    """
    for p in prunable.module.parameters():
        p.requires_grad_(True)  # the graph is traced with autograd
    macs_before, params_before = count(prunable)
    pruner = _pruner(prunable, ratio, round_to)
    roots = _roots(pruner)
    # a group of round_to channels or fewer has no smaller multiple of round_to to keep: it stays whole
    narrow = {name: c for name, (_, c) in roots.items() if round_to > 1 and c <= round_to}
    if narrow:
        widened = Prunable(prunable.module, prunable.example, [*prunable.keep, *(roots[n][0] for n in narrow)])
        pruner = _pruner(widened, ratio, round_to)
    before = {name: c for name, (_, c) in roots.items() if name not in narrow}
    check_channels(before, ratio, round_to)
    pruner.step()
    graph = pruner.DG  # reads the pruned modules' sizes
    after = {name: int(graph.get_out_channels(module) or 0) for name, (module, _) in roots.items()}
    macs_after, params_after = count(prunable)
    layers = {name: (c, after.get(name, 0)) for name, c in before.items()} | {n: (c, c) for n, c in narrow.items()}
    return PruneResult(ratio, macs_before, macs_after, params_before, params_after, layers)


def ratio_for_macs(
    source: Prunable, reduction: float, round_to: int, *, steps: int = SEARCH_STEPS
) -> tuple[Prunable, PruneResult]:
    """Prune a copy of ``source`` at the smallest per-layer ratio that removes at least ``reduction`` of the MACs.

    Bisection on copies (``source`` is left as it was); the pruned copy and what pruning did come back.

    Args:
        source: the network to prune (:class:`Prunable`).
        reduction: the MACs share to remove, in (0, 1).
        round_to: see :func:`kept_channels`.

    Raises:
        UnreachableTarget: even the largest ratio that keeps a channel everywhere removes less.
    """
    low, high = 0.0, MAX_SEARCH_RATIO
    best: tuple[Prunable, PruneResult] | None = None
    most, emptied = 0.0, ""  # the largest share removed by a ratio that kept a channel everywhere; the last refusal
    for _ in range(steps):  # good ratios form one interval: reaching the target, below emptying a layer
        mid = (low + high) / 2
        candidate = clone(source)
        try:
            result = prune(candidate, mid, round_to)
        except ZeroChannelsError as exc:
            high, emptied = mid, str(exc)
            continue
        most = max(most, 1 - result.macs_kept)
        if 1 - result.macs_kept >= reduction:
            best, high = (candidate, result), mid
        else:
            low = mid
    if best is None:
        raise UnreachableTarget(
            f"compress.macs_reduction {reduction:.0%} cannot be reached ({most:.1%} at most) without leaving a "
            f"layer empty at round_to {round_to}; lower it, or set compress.ratio instead"
            + (f" (the last ratio refused: {emptied})" if emptied else "")
        )
    log.info(
        "compress: ratio %.3f removes %.1f %% of the MACs (target %.0f %%)",
        best[1].ratio,
        100 * (1 - best[1].macs_kept),
        100 * reduction,
    )
    return best


def clone(prunable: Prunable) -> Prunable:
    """A deep copy (the module and the example; the kept modules mapped onto the copy's)."""
    memo: dict[int, Any] = {}
    module = copy.deepcopy(prunable.module, memo)
    keep = [memo.get(id(m), m) for m in prunable.keep]
    return Prunable(module, prunable.example.clone(), keep, prunable.keep_why)
