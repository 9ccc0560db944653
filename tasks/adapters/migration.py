"""Move an embedded-default project onto the server stack: the MLflow store keeping every id, the artifacts and
the DVC remote onto S3, and a check that proves nothing was lost.

The audit log, the lineage tags and the cycle reports name model versions and training runs by number and id, so
the move must not renumber anything. MLflow's own export/import tools re-create runs (new run ids) and versions
(new numbers); this module copies the store's tables instead, row by row, between two databases at the same
schema revision (both made by the MLflow in the lock): every experiment, run, metric, parameter, tag, registered
model, version, version tag and alias keeps its key.

- :func:`copy_store`: one transaction on the target (all rows or none), which must hold nothing yet but what an
  MLflow server creates on an empty database (the default experiment and workspace); artifact locations under the
  local artifact root are rewritten to the server's proxied ``mlflow-artifacts:`` scheme; PostgreSQL sequences are
  moved past the copied ids so new experiments do not collide.
- :func:`copy_tree`: every file under a local folder to ``s3://bucket/prefix``, same relative paths: the MLflow
  artifact root to the server's ``--artifacts-destination``, the local DVC remote to the S3 one (DVC's
  content-addressed layout is the same on both, so ``dvc pull`` from S3 finds every pushed version).
- :func:`check_store` (row counts and a hash of every table's rows, locations compared after the rewrite) and
  :func:`check_tree` (every file's sha256 read back from S3): the proof that nothing was lost.

- :func:`move_log`: the local prediction log onto ``base.storage.predictions`` when the target params put it on
  S3, published as its readers read it (unique parts + a manifest, :mod:`tasks.adapters.log_store`), then checked
  part by part (every local part live on S3 with the same sha256, nothing else live, the same row count read back
  through PyArrow's S3 filesystem). Production batches move as a folder (``base.paths.production`` ->
  ``base.storage.production``, same ``<batch>/images/...`` layout) with :func:`copy_tree` / :func:`check_tree`.

The audit trail and the label ledger stay in the project folder on the stack (the same files the flows read
there): nothing to move.

Run: ``python -m tasks.adapters.migration --artifacts-destination s3://b/mlartifacts [--dvc-remote-destination
s3://b/dvc] [--params params.yaml --params params.server.yaml]`` (the params, with the stack's overlay, name the
log's and the production batches' S3 locations); the target database URL (it holds a password) only from the
environment variable named by ``--target-db-env``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import sqlalchemy as sa

from tasks.adapters import log_store, s3
from tasks.config import Params, VisionloopError, load_params
from tasks.core.hashing import file_sha256

log = logging.getLogger(__name__)

PROXIED = "mlflow-artifacts:"
# (table, column) that hold an artifact location: rewritten from the local root to the proxied scheme
LOCATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
# rows an MLflow server writes into an empty database on its first start: replaced by the source's
SEED_TABLES = ("experiments", "workspaces")
SKIP_TABLES = ("alembic_version",)
CHUNK_ROWS = 1000


class MigrationError(VisionloopError, RuntimeError):
    """The migration cannot start or did not preserve the store (names what and where)."""


@dataclass(frozen=True)
class TableCheck:
    """One table before and after: row counts and the sha256 of its rows in primary-key order."""

    table: str
    source_rows: int
    target_rows: int
    source_sha256: str
    target_sha256: str

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows and self.source_sha256 == self.target_sha256


@dataclass(frozen=True)
class TreeCheck:
    """One local folder against its copy on S3: files, bytes and what differs."""

    source: str
    destination: str
    files: int
    bytes: int
    problems: list[str]


@dataclass(frozen=True)
class LogCheck:
    """The local prediction log against the one on S3: parts, rows and what differs."""

    source: str
    destination: str
    parts: int
    rows: int
    problems: list[str]


@dataclass(frozen=True)
class MigrationCheck:
    """Every table and every copied folder compared; ``problems`` empty means nothing was lost or changed."""

    tables: list[TableCheck]
    trees: list[TreeCheck]
    problems: list[str] = field(default_factory=list)
    logs: list[LogCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        checks: list[TreeCheck | LogCheck] = [*self.trees, *self.logs]
        return not self.problems and not any(c.problems for c in checks)


def location_rewriter(root: Path) -> Callable[[str | None], str | None]:
    """Map a location under the local artifact ``root`` (a path or ``file://`` URI) to ``mlflow-artifacts:/...``;
    any other value (``models:/m-...``, ``runs:/...``, a location elsewhere) stays as it is."""
    root = Path(root).resolve()

    def rewrite(value: str | None) -> str | None:
        if not value:
            return value
        path = _local_path(value)
        if path is None:
            return value
        try:
            relative = path.relative_to(root)
        except ValueError:
            return value
        return f"{PROXIED}/{relative.as_posix()}" if str(relative) != "." else f"{PROXIED}/"

    return rewrite


def _local_path(value: str) -> Path | None:
    if value.startswith("file:"):
        return Path(unquote(urlparse(value).path)).resolve()
    if value.startswith("/"):
        return Path(value).resolve()
    return None


def _normal(value: Any) -> Any:
    """A value as both SQLite and PostgreSQL give it back: booleans as ints, JSON sorted, times in ISO format."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def _ordered_rows(conn: sa.Connection, table: sa.Table) -> Iterator[dict[str, Any]]:
    keys = list(table.primary_key.columns) or list(table.columns)
    for row in conn.execute(sa.select(table).order_by(*keys)).mappings():
        yield dict(row)


def _rewritten(table: str, row: dict[str, Any], rewrite: Callable[[str | None], str | None]) -> dict[str, Any]:
    out = dict(row)
    for name, column in LOCATION_COLUMNS:
        if name == table and column in out:
            out[column] = rewrite(out[column])
    return out


def table_digest(rows: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
    """(rows, sha256) of rows in the order given, every value normalised (:func:`_normal`), columns by name."""
    digest, count = hashlib.sha256(), 0
    for row in rows:
        digest.update(json.dumps({k: _normal(v) for k, v in sorted(row.items())}, default=str).encode() + b"\n")
        count += 1
    return count, digest.hexdigest()


def _reflect(engine: sa.Engine) -> sa.MetaData:
    metadata = sa.MetaData()
    metadata.reflect(engine)
    return metadata


def _revision(conn: sa.Connection, where: str) -> str:
    try:
        return str(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one())
    except sa.exc.SQLAlchemyError as err:
        raise MigrationError(
            f"{where}: not an MLflow store (no alembic_version): start `mlflow server` on it once (make stack-up) "
            "so that it creates its tables"
        ) from err


def _refuse_non_empty(conn: sa.Connection, target: sa.MetaData, where: str) -> None:
    for name in ("runs", "registered_models", "model_versions", "logged_models"):
        if name in target.tables and conn.execute(sa.select(sa.func.count()).select_from(target.tables[name])).scalar():
            raise MigrationError(
                f"{where}: table {name} already has rows; the migration only fills an empty server store "
                "(a fresh make stack-up), it never merges into one in use"
            )
    experiments = target.tables.get("experiments")
    if experiments is not None:
        ids = conn.execute(sa.select(experiments.c.experiment_id)).scalars().all()
        if any(int(i) != 0 for i in ids):
            raise MigrationError(f"{where}: experiments {sorted(ids)} exist besides the default one (0)")


def _reset_sequences(conn: sa.Connection) -> None:
    """PostgreSQL: move every serial/identity sequence past the largest copied id."""
    if conn.dialect.name != "postgresql":
        return
    columns = conn.execute(
        sa.text(
            "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name) "
            "FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND (column_default LIKE 'nextval%' OR is_identity = 'YES')"
        )
    ).all()
    for table, column, sequence in columns:
        if sequence:
            conn.execute(
                sa.text(f'SELECT setval(:seq, COALESCE((SELECT MAX("{column}") FROM "{table}"), 0) + 1, false)'),
                {"seq": sequence},
            )


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def copy_store(source_url: str, target_url: str, artifact_root: Path) -> dict[str, int]:
    """Copy every row of the source MLflow store into the (empty, same revision) target in one transaction.

    Args:
        source_url: the embedded store (``sqlite:///mlflow.db``).
        target_url: the server's database (``postgresql+psycopg://...``), made by ``mlflow server`` on first start.
        artifact_root: the embedded store's artifact root (``registry.artifact_root``), rewritten to
            ``mlflow-artifacts:/``.

    Returns:
        rows copied per table.

    Raises:
        MigrationError: a store that is not MLflow's, different schema revisions, a target already in use.
    """
    source, target = sa.create_engine(source_url), sa.create_engine(target_url)
    rewrite = location_rewriter(artifact_root)
    where_source, where_target = _redact(source_url), _redact(target_url)
    try:
        source_meta, target_meta = _reflect(source), _reflect(target)
        copied: dict[str, int] = {}
        with source.connect() as read, target.begin() as write:
            revisions = _revision(read, where_source), _revision(write, where_target)
            if revisions[0] != revisions[1]:
                raise MigrationError(
                    f"schema revision {revisions[0]} at {where_source} but {revisions[1]} at {where_target}: "
                    "run `mlflow db upgrade` on the older one with the MLflow of requirements.lock"
                )
            _refuse_non_empty(write, target_meta, where_target)
            tables = [t for t in target_meta.sorted_tables if t.name not in SKIP_TABLES]
            for table in reversed(tables):
                if table.name in SEED_TABLES:
                    write.execute(table.delete())
            for table in tables:
                if table.name not in source_meta.tables:
                    continue
                rows = (_rewritten(table.name, r, rewrite) for r in _ordered_rows(read, source_meta.tables[table.name]))
                copied[table.name] = _insert(write, table, rows)
            _reset_sequences(write)
    finally:
        source.dispose()
        target.dispose()
    return copied


def _insert(conn: sa.Connection, table: sa.Table, rows: Iterable[dict[str, Any]]) -> int:
    names = {c.name for c in table.columns}
    batch: list[dict[str, Any]] = []
    total = 0
    for row in rows:
        batch.append({k: v for k, v in row.items() if k in names})
        if len(batch) >= CHUNK_ROWS:
            conn.execute(table.insert(), batch)
            total, batch = total + len(batch), []
    if batch:
        conn.execute(table.insert(), batch)
        total += len(batch)
    return total


def local_files(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: relative POSIX path -> (size, sha256)."""
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        found[path.relative_to(root).as_posix()] = (path.stat().st_size, file_sha256(path))
    return found


def _key(prefix: str, relative: str) -> str:
    return f"{prefix.rstrip('/')}/{relative}" if prefix else relative


def copy_tree(
    conn: s3.S3Connection, root: Path, destination: str, files: Mapping[str, tuple[int, str]] | None = None
) -> int:
    """Upload every file under ``root`` to ``destination`` (``s3://bucket/prefix``), same relative paths.

    ``files`` is :func:`local_files` of ``root`` when the caller has it (hashed once for the copy and the check).

    Returns:
        files uploaded. An object already there with the same size and sha256 is skipped (a re-run resumes).
    """
    where = s3.parse_uri(destination)
    present = {o.key: o.size for o in s3.list_objects(conn, where)}
    uploaded = 0
    for relative, (size, sha) in (local_files(root) if files is None else files).items():
        key = _key(where.prefix, relative)
        if present.get(key) == size and s3.sha256_object(conn, where.bucket, key).sha256 == sha:
            continue
        s3.upload_file(conn, Path(root) / relative, where.bucket, key)
        uploaded += 1
    return uploaded


def check_store(source_url: str, target_url: str, artifact_root: Path) -> tuple[list[TableCheck], list[str]]:
    """Compare the stores table by table: counts and row hashes, locations after the rewrite.

    Returns:
        one :class:`TableCheck` per source table, and the problems found (empty: identical).
    """
    rewrite = location_rewriter(artifact_root)
    source, target = sa.create_engine(source_url), sa.create_engine(target_url)
    problems: list[str] = []
    tables: list[TableCheck] = []
    try:
        source_meta, target_meta = _reflect(source), _reflect(target)
        with source.connect() as read, target.connect() as back:
            for name in sorted(set(source_meta.tables) - set(SKIP_TABLES)):
                if name not in target_meta.tables:
                    problems.append(f"table {name} is missing on the target")
                    continue
                rows = (_rewritten(name, r, rewrite) for r in _ordered_rows(read, source_meta.tables[name]))
                before = table_digest(rows)
                after = table_digest(_ordered_rows(back, target_meta.tables[name]))
                tables.append(TableCheck(name, before[0], after[0], before[1], after[1]))
                if not tables[-1].ok:
                    problems.append(f"table {name}: {before[0]} rows before, {after[0]} after, rows differ")
    finally:
        source.dispose()
        target.dispose()
    return tables, problems


def check_tree(
    conn: s3.S3Connection, root: Path, destination: str, files: Mapping[str, tuple[int, str]] | None = None
) -> tuple[int, int, list[str]]:
    """Every file under ``root`` against its object under ``destination``: (files, bytes, problems)."""
    files = local_files(root) if files is None else files
    where = s3.parse_uri(destination)
    problems: list[str] = []
    for relative, (size, sha) in files.items():
        key = _key(where.prefix, relative)
        try:
            fetched = s3.sha256_object(conn, where.bucket, key)
        except s3.S3ObjectMissing:
            problems.append(f"{root}/{relative}: not at s3://{where.bucket}/{key}")
            continue
        if (fetched.size, fetched.sha256) != (size, sha):
            problems.append(f"{root}/{relative}: s3://{where.bucket}/{key} differs (size or sha256)")
    return len(files), sum(size for size, _ in files.values()), problems


def move_log(params: Params, conn: s3.S3Connection, *, copy: bool = True) -> LogCheck:
    """Publish the local prediction log to ``base.storage.predictions`` (unless ``copy`` is false), then check it.

    The local folder (``base.paths.predictions``) becomes the log's read-through mirror. The check reads S3 afresh:
    every local part must be live there under its name, its manifest entry and its bytes read back with the
    same sha256, no other part may be live (a target
    that already held a log is reported), and the dataset read straight from S3 must hold as many rows.

    Raises:
        MigrationError: the params keep the log local (nothing to move).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    location = params.base.storage.predictions
    if location is None:
        raise MigrationError("base.storage.predictions is null in these params: the log stays local, nothing to move")
    root = log_store.local_folder(params)
    local = log_store.local_parts(params)
    if copy and local:
        done = log_store.publish_local_changes(params)
        log.info("%s -> %s: %d part(s) published", root, location, len(done.parts) if done else 0)
    live = log_store.live_parts(location, conn=conn)
    problems = []
    for name, path in local.items():
        part = live.get(name)
        if part is None:
            problems.append(f"{root}/{name}: not live in {location}")
        else:  # the bytes on S3, not only what the manifest says about them
            bucket, want = s3.parse_uri(location).bucket, file_sha256(path)
            try:
                same = part.sha256 == want and s3.sha256_object(conn, bucket, part.key).sha256 == want
            except s3.S3ObjectMissing:
                problems.append(f"{root}/{name}: s3://{bucket}/{part.key} is named by a manifest but gone")
                continue
            if not same:
                problems.append(f"{root}/{name}: s3://{bucket}/{part.key} differs (sha256)")
    problems += [f"{location}: {name} is live on S3 but not in {root}" for name in sorted(set(live) - set(local))]
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in local.values())
    if live:
        try:
            read_back = log_store.open_dataset(location, conn=conn).count_rows()
        except (OSError, pa.ArrowException) as exc:  # a part that is not Parquet (anymore)
            problems.append(f"{location}: cannot be read back from S3 ({exc})")
        else:
            if read_back != rows:
                problems.append(f"{location}: {read_back} rows read back from S3, {rows} in {root}")
    return LogCheck(str(root), location, len(local), rows, problems)


def migrate(
    *,
    source_url: str,
    target_url: str,
    artifact_root: Path,
    conn: s3.S3Connection,
    trees: Mapping[Path, str],
    copy: bool = True,
    params: Params | None = None,
) -> MigrationCheck:
    """Copy the store and the folders (unless ``copy`` is false), then check everything.

    Args:
        source_url, target_url, artifact_root: as :func:`copy_store`.
        conn: the S3 connection (endpoint and credentials from the environment).
        trees: local folder -> ``s3://bucket/prefix``: the artifact root and, when moved, the DVC remote.
        copy: false = only compare (``--check-only``).
        params: the stack's params: the prediction log moves (:func:`move_log`) when they put it on S3.
    """
    hashed = {root: local_files(root) for root in trees}  # once for the copy and the check
    if copy:
        copied = copy_store(source_url, target_url, artifact_root)
        log.info("copied %d rows in %d tables", sum(copied.values()), len(copied))
        for root, destination in trees.items():
            uploaded = copy_tree(conn, root, destination, hashed[root])
            log.info("%s -> %s: %d files uploaded", root, destination, uploaded)
    tables, problems = check_store(source_url, target_url, artifact_root)
    checked = [TreeCheck(str(root), dest, *check_tree(conn, root, dest, hashed[root])) for root, dest in trees.items()]
    logs = []
    if params is not None and params.base.storage.predictions is not None:
        logs.append(move_log(params, conn, copy=copy))
    return MigrationCheck(tables, checked, problems, logs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.adapters.migration", description=__doc__)
    parser.add_argument("--source", default="sqlite:///mlflow.db", help="the embedded store (default: %(default)s)")
    parser.add_argument("--artifact-root", type=Path, default=Path("mlartifacts"), help="its local artifact root")
    parser.add_argument(
        "--target-db-env",
        default="VISIONLOOP_MLFLOW_DB_URL",
        help="environment variable holding the server store's database URL (default: %(default)s)",
    )
    parser.add_argument("--artifacts-destination", required=True, help="the MLflow server's s3://bucket/prefix")
    parser.add_argument("--dvc-remote", type=Path, default=None, help="the local DVC remote folder to move")
    parser.add_argument("--dvc-remote-destination", default=None, help="the S3 DVC remote (s3://bucket/prefix)")
    parser.add_argument(
        "--params",
        action="append",
        type=Path,
        default=None,
        help="the stack's params (repeat: base, then overlays): base.storage moves the log and production batches",
    )
    parser.add_argument("--check-only", action="store_true", help="compare only, copy nothing")
    parser.add_argument("--out", type=Path, default=None, help="write the check as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    target = os.environ.get(args.target_db_env)
    if not target:
        print(f"migration: set {args.target_db_env} to the server store's database URL", file=sys.stderr)
        return 2
    if (args.dvc_remote is None) != (args.dvc_remote_destination is None):
        print("migration: --dvc-remote and --dvc-remote-destination go together", file=sys.stderr)
        return 2
    trees = {args.artifact_root: args.artifacts_destination}
    if args.dvc_remote is not None:
        trees[args.dvc_remote] = args.dvc_remote_destination
    try:
        params = load_params(args.params) if args.params else None
        if params is not None and params.base.storage.production is not None:
            production = Path(params.base.paths.production)
            if production.is_dir():
                trees[production] = params.base.storage.production
        result = migrate(
            source_url=args.source,
            target_url=target,
            artifact_root=args.artifact_root,
            conn=s3.connect(),
            trees=trees,
            copy=not args.check_only,
            params=params,
        )
    except (VisionloopError, s3.S3Error) as exc:
        print(f"migration FAILED: {exc}", file=sys.stderr)
        return 1
    if args.out is not None:
        from tasks.io import write_json_atomic

        write_json_atomic(args.out, asdict(result) | {"ok": result.ok})
    rows = sum(t.source_rows for t in result.tables)
    print(f"migration check: {len(result.tables)} tables, {rows} rows: {'OK' if not result.problems else 'FAILED'}")
    for tree in result.trees:
        state = "OK" if not tree.problems else "FAILED"
        print(f"  {tree.source} -> {tree.destination}: {tree.files} files, {tree.bytes / 1e6:.1f} MB: {state}")
    for moved in result.logs:
        state = "OK" if not moved.problems else "FAILED"
        print(f"  {moved.source} -> {moved.destination}: {moved.parts} log parts, {moved.rows} rows: {state}")
    checks: list[TreeCheck | LogCheck] = [*result.trees, *result.logs]
    for problem in [*result.problems, *(p for c in checks for p in c.problems)]:
        print(f"  {problem}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
