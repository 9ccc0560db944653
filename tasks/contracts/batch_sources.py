"""``<production>/<batch>/sources.csv``: which source (camera / line / site) each image of a production batch came from.

The world generator writes it beside a batch's ``images/``; the predict stage reads it (:func:`read_sources`) and
logs each image's source in the prediction log's ``source`` column. The file is optional: without it, or for an
image it does not name, the source is ``"default"``
(:data:`tasks.contracts.prediction_schema.DEFAULT_SOURCE`).

Format: UTF-8 CSV, header exactly ``image_id,source``, then one row per image: ``image_id`` is the image file's
stem (``images/cam_a_000001.png`` -> ``cam_a_000001``), ``source`` a non-empty name. Blank lines are ignored; an
image named twice, a row without exactly two non-empty fields or another header is an error naming the file and line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tasks.config import VisionloopError

SOURCES_FILE = "sources.csv"
HEADER = ("image_id", "source")


class SourcesError(VisionloopError, ValueError):
    """A ``sources.csv`` file does not follow the format of this module (names the file and line)."""


def sources_path(batch_dir: Path) -> Path:
    """``<batch_dir>/sources.csv``."""
    return Path(batch_dir) / SOURCES_FILE


def read_sources(path: Path) -> dict[str, str]:
    """Read a batch's ``sources.csv``: image id -> source name.

    Args:
        path: the file (:func:`sources_path`); a missing file gives ``{}`` (every image is ``default``).

    Returns:
        image id (file stem) -> source, in file order.

    Raises:
        SourcesError: not UTF-8, another header, a row without exactly two non-empty fields, or an image id named
            twice; the message names the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM some editors add is not part of the header
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise SourcesError(f"{path}: cannot read the batch's sources ({err})") from err
    return parse_sources(text, where=str(path))


def parse_sources(text: str, *, where: str) -> dict[str, str]:
    """Parse the text of a ``sources.csv`` (read from a file or an object store): image id -> source name.

    Args:
        text: the file's text (a leading BOM is ignored).
        where: the file or URI it came from (``s3://bucket/prefix/<batch>/sources.csv``), named in errors.

    Raises:
        SourcesError: as :func:`read_sources`, naming ``where`` and the line.
    """
    text = text.removeprefix("\ufeff")
    found: dict[str, str] = {}
    first_line: dict[str, int] = {}
    header_seen = False
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            cells = [f.strip() for f in fields]
            if not header_seen:
                if tuple(cells) != HEADER:
                    raise SourcesError(f"{where} line {line}: header {fields} must be {','.join(HEADER)}")
                header_seen = True
                continue
            if len(cells) != 2 or not all(cells):
                raise SourcesError(
                    f"{where} line {line}: expected 'image_id,source' (two non-empty fields), got {fields}"
                )
            image_id, source = cells
            if image_id in found:
                raise SourcesError(
                    f"{where} line {line}: image {image_id!r} already named on line {first_line[image_id]}"
                )
            found[image_id] = source
            first_line[image_id] = line
    except csv.Error as err:
        raise SourcesError(f"{where} line {reader.line_num}: not valid CSV ({err})") from err
    if not header_seen:
        raise SourcesError(f"{where}: empty; it needs the header {','.join(HEADER)} (or delete the file)")
    return found
