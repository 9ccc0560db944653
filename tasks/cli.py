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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tasks.config import DEFAULT_PARAMS, Params, VisionloopError, load_params, stage_argparser
from tasks.env import apply_env
from tasks.io import write_bytes_atomic

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


EFFECTIVE_PARAMS = "params.effective.yaml"


def effective_params_text(params: Params) -> str:
    """The effective params as YAML: every key, overlays and overrides applied (what the stages ran with)."""
    header = f"# effective params, written by visionloop (do not edit): {' + '.join(params.sources) or 'code'}\n"
    return header + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def write_effective_params(params: Params, path: Path = Path(EFFECTIVE_PARAMS)) -> Path:
    """Write :func:`effective_params_text` atomically to ``path`` (the file every DVC stage reads its params from).

    DVC records in ``dvc.lock`` the values of the keys a stage declares, read from this file, so the lock names
    the params that produced the outputs: overlays and flow overrides included.
    """
    return write_bytes_atomic(path, effective_params_text(params).encode())


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.cli effective-params --params params.yaml [--params site.yaml ...] [--out F]``.

    Writes the layered params as one complete file (default ``params.effective.yaml``): the ``params`` stage of
    ``dvc.yaml`` runs this, and every other DVC stage reads its params from that file.
    """
    parser = argparse.ArgumentParser(prog="python -m tasks.cli", description=main.__doc__)
    parser.add_argument("command", choices=["effective-params"])
    parser.add_argument("--params", action="append", default=None, help="params files, base first")
    parser.add_argument("--out", type=Path, default=Path(EFFECTIVE_PARAMS), help="where to write them")
    args = parser.parse_args(argv)
    try:
        path = write_effective_params(load_params(args.params or [DEFAULT_PARAMS]), args.out)
    except VisionloopError as exc:
        raise SystemExit(f"tasks.cli: {exc}") from None
    print(path)


if __name__ == "__main__":
    main()
