"""One command line for every stage: ``python -m tasks.<stage> --params P [--params OVERLAY ...] [stage options]``.

:func:`stage_main` is the whole ``main()`` of a stage: it parses ``--params`` (repeatable: overlays layered over
the base, later wins), applies the environment (offline switches, ``.env``), sets up logging, loads the params,
runs the stage and prints its one-line summary. A :class:`~tasks.config.VisionloopError` (bad params, bad input,
a service that refused) ends the process with exit code 1 and ``<stage>: <message>`` on stderr; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tasks.config import DEFAULT_PARAMS, Params, VisionloopError, load_params, stage_argparser
from tasks.env import apply_env

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def stage_main(
    stage: str,
    doc: str | None,
    run: Callable[[Params, argparse.Namespace], Any],
    *,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    summary: Callable[[Any], str | None] | None = None,
    argv: list[str] | None = None,
) -> Any:
    """Parse, set up, run one stage and report: the ``main()`` of every ``tasks/<stage>.py``.

    Args:
        stage: the stage's name (program name and error prefix).
        doc: the module docstring (its first line is the ``--help`` description).
        run: called with the loaded params and the parsed arguments; its return value is the stage's result.
        arguments: adds the stage's own options to the parser.
        summary: turns the result into the line printed on stdout (``None``: print nothing).
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        What ``run`` returned (tests call ``main([...])`` directly).
    """
    parser = stage_argparser(stage, doc.strip().splitlines()[0] if doc else None)
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        result = run(load_params(args.params), args)
    except VisionloopError as exc:
        print(f"{stage}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    line = summary(result) if summary is not None else None
    if line:
        print(line)
    return result


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, data


def dvc_set_args(files: list[str]) -> list[str]:
    """``dvc exp run`` arguments that turn ``params.yaml`` into the layered params of ``files``.

    DVC reads params from ``params.yaml`` only (the stage commands in ``dvc.yaml`` say ``--params params.yaml``),
    so an overlay reaches ``dvc repro`` the DVC way: ``dvc exp run -S key=value`` for every effective key
    that differs from ``params.yaml``; DVC then tracks the changed params like any others. The first file
    must be ``params.yaml`` (or a file that ``extends`` it). Empty result: nothing differs, plain ``dvc repro``.
    """
    base = load_params(DEFAULT_PARAMS).model_dump(mode="json")
    layered = load_params(files).model_dump(mode="json")
    if Path(DEFAULT_PARAMS).resolve() not in {Path(f).resolve() for f in load_params(files).sources}:
        raise VisionloopError(f"dvc repro reads {DEFAULT_PARAMS}: layer your overlay over it ({files})")
    old = dict(_leaves(base))
    args = []
    for key, value in _leaves(layered):
        if key not in old or old[key] != value:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("\n...").strip()
            args += ["-S", f"{key}={text}"]
    return args


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.cli dvc-set --params params.yaml --params site.yaml``: print ``dvc exp run`` arguments."""
    parser = argparse.ArgumentParser(prog="python -m tasks.cli", description=main.__doc__)
    parser.add_argument("command", choices=["dvc-set"])
    parser.add_argument("--params", action="append", default=None, help="params files, base first")
    args = parser.parse_args(argv)
    try:
        print(shlex.join(dvc_set_args(args.params or [DEFAULT_PARAMS])))
    except VisionloopError as exc:
        raise SystemExit(f"tasks.cli: {exc}") from None


if __name__ == "__main__":
    main()
