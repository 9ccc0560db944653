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
from typing import Any

from tasks.config import Params, VisionloopError, load_params, stage_argparser
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
