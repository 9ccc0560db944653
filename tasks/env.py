"""Offline switches and telemetry opt-outs, applied by the project itself.

``visionloop.env`` (project root) is the single list; the Makefile exports it and every entry point
(stage ``main()``, flows, tests) calls :func:`apply_env` before importing Ultralytics, MLflow, Prefect
or GX. Values already set in the environment win, so a user can still override them. This module imports
none of those libraries: a model family turns off its library's own integrations when it is first used
(``tasks.models.yolo.configure_ultralytics``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = PROJECT_ROOT / "visionloop.env"
_PATH_SUFFIXES = ("_DIR", "_HOME")
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines (``#`` comments, blank lines ignored); resolve relative paths."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path} line {lineno}: expected KEY=VALUE, got {raw!r}")
        key, value = key.strip(), value.strip()
        if key.endswith(_PATH_SUFFIXES) and value and not Path(value).is_absolute():
            value = str(path.parent / value)
        values[key] = value
    return values


def _install_fonts(config_dir: Path) -> None:
    """Give Ultralytics the fonts it would otherwise download (its font check ignores YOLO_OFFLINE)."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for folder in (config_dir / "Ultralytics",):
        folder.mkdir(parents=True, exist_ok=True)
        for name in _FONTS:
            target = folder / name
            if not target.exists():
                shutil.copyfile(source, target)


def apply_env(path: Path = ENV_FILE) -> dict[str, str]:
    """Set the offline/telemetry variables (``setdefault``) and prepare Ultralytics' config dir.

    Returns:
        The variables as they are now in ``os.environ``.
    """
    values = read_env_file(path)
    for key, value in values.items():
        current = os.environ.setdefault(key, value)
        if key.endswith(_PATH_SUFFIXES) and current and not Path(current).is_absolute():
            os.environ[key] = str(Path(current).resolve())
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    config_dir.mkdir(parents=True, exist_ok=True)
    _install_fonts(config_dir)
    openvino_telemetry_opt_out()
    return {key: os.environ[key] for key in values}


def openvino_telemetry_opt_out(home: Path | None = None) -> Path | None:
    """Decline OpenVINO/NNCF telemetry the way its ``opt_in_out --opt_out`` does: ``~/intel/openvino_telemetry`` = 0.

    OpenVINO has no environment switch: without that consent file it *sends* (from a forked process, which
    deadlocks when the parent has threads holding OpenSSL locks and leaves ``make demo`` hanging at exit). An
    existing file is left alone, so a user's own choice stands. Returns the file, or None when it cannot be written.
    """
    consent = (home or Path.home()) / "intel" / "openvino_telemetry"
    if consent.exists():
        return consent
    try:
        consent.parent.mkdir(parents=True, exist_ok=True)
        consent.write_text("0\n")
    except OSError:
        return None
    return consent


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.env check`` prepares the offline settings; ``exec -- CMD`` runs CMD under them."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tasks.env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="apply the settings, prepare Ultralytics' config dir and fonts, print them")
    run = sub.add_parser("exec", help="run a command with the settings in its environment")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    values = apply_env()
    if args.command == "check":
        print(
            f"offline settings applied ({len(values)} variables from {ENV_FILE.name}); "
            f"Ultralytics config in {os.environ['YOLO_CONFIG_DIR']}"
        )
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("exec needs a command")
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)
    return 1  # pragma: no cover, execvp does not return


if __name__ == "__main__":
    raise SystemExit(main())
