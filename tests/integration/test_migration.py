"""The move onto the server stack keeps every id and every byte, and its check fails when anything was lost.

A real MLflow store (the stock client writes runs, metrics, a registered model, versions, tags and aliases), a real
S3 endpoint (moto_server). The target here is a second SQLite store made by MLflow: the copy and the check are the
same SQLAlchemy code for PostgreSQL, which the stack suite (tests/stack) runs behind a real ``mlflow server``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.adapters import migration, s3
from tests.s3_server import S3Server, unique_bucket

MODEL = "visionloop-detector"


@pytest.fixture(scope="module")
def server(moto_s3) -> S3Server:
    return moto_s3


@pytest.fixture
def conn(server, monkeypatch) -> s3.S3Connection:
    server.apply(monkeypatch)
    return s3.connect()


def make_source(root: Path) -> tuple[str, Path, list[str]]:
    """An embedded store as the project writes it: artifact root mlartifacts/<run>/artifacts, three versions."""
    from mlflow import MlflowClient

    artifacts = root / "mlartifacts"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("visionloop", artifact_location=artifacts.as_uri())
    runs = []
    for i in range(3):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "map50_95", 0.1 * i, step=i)
        client.log_param(run.info.run_id, "epochs", str(10 + i))
        client.set_tag(run.info.run_id, "cycle", f"c{i}")
        weights = root / f"w{i}.bin"
        weights.write_bytes(os.urandom(2048 + i))
        client.log_artifact(run.info.run_id, str(weights), "weights")
        runs.append(run.info.run_id)
    client.create_registered_model(MODEL)
    for run_id in runs:
        version = client.create_model_version(MODEL, source=f"{artifacts}/{run_id}/artifacts/weights", run_id=run_id)
        client.set_model_version_tag(MODEL, version.version, "train_run_id", run_id)
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.set_registered_model_alias(MODEL, "previous", "1")
    return uri, artifacts, runs


def make_target(root: Path) -> str:
    """An empty store as ``mlflow server`` leaves it on first start: tables, the default experiment."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'target.db'}"
    MlflowClient(uri, registry_uri=uri).search_experiments()
    return uri


@pytest.fixture
def stores(tmp_path, conn):
    source, artifacts, runs = make_source(tmp_path)
    bucket = unique_bucket()
    s3.ensure_bucket(conn, bucket)
    return source, make_target(tmp_path), artifacts, runs, f"s3://{bucket}/mlartifacts"


def move(stores, conn, *, copy: bool = True) -> migration.MigrationCheck:
    source, target, artifacts, _, destination = stores
    return migration.migrate(
        source_url=source,
        target_url=target,
        artifact_root=artifacts,
        conn=conn,
        trees={artifacts: destination},
        copy=copy,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("file:///p/mlartifacts/abc/artifacts", "mlflow-artifacts:/abc/artifacts", id="file-uri"),
        pytest.param("/p/mlartifacts/abc/artifacts/w", "mlflow-artifacts:/abc/artifacts/w", id="path"),
        pytest.param("file:///p/mlartifacts", "mlflow-artifacts:/", id="the-root"),
        pytest.param("models:/m-0123", "models:/m-0123", id="model-uri-stays"),
        pytest.param("/elsewhere/mlruns/0", "/elsewhere/mlruns/0", id="outside-the-root-stays"),
        pytest.param("file:///p/mlartifacts-old/x", "file:///p/mlartifacts-old/x", id="prefix-is-not-enough"),
        pytest.param(None, None, id="null"),
    ],
)
def test_locations_under_the_artifact_root_move_to_the_proxied_scheme(value, expected):
    assert migration.location_rewriter(Path("/p/mlartifacts"))(value) == expected


def test_everything_moves_with_its_ids_and_the_check_proves_it(stores, conn, tmp_path):
    from mlflow import MlflowClient

    _, target, artifacts, runs, destination = stores
    result = move(stores, conn)
    assert result.ok, result.problems + result.trees[0].problems
    assert result.trees[0].files == 3
    counts = {t.table: t.target_rows for t in result.tables}
    assert counts["runs"] == 3 and counts["model_versions"] == 3 and counts["registered_model_aliases"] == 2
    moved = MlflowClient(target, registry_uri=target)
    champion = moved.get_model_version_by_alias(MODEL, "champion")
    assert (str(champion.version), champion.run_id) == ("2", runs[1])  # same number, same run id
    assert champion.tags["train_run_id"] == runs[1]
    assert champion.source == f"mlflow-artifacts:/{runs[1]}/artifacts/weights"
    run = moved.get_run(runs[2])
    assert run.data.metrics == {"map50_95": pytest.approx(0.2)} and run.data.params == {"epochs": "12"}
    assert run.info.artifact_uri == f"mlflow-artifacts:/{runs[2]}/artifacts"
    where = s3.parse_uri(destination)
    key = f"{where.prefix}/{runs[0]}/artifacts/weights/w0.bin"
    assert s3.read_bytes(conn, where.bucket, key) == (tmp_path / "w0.bin").read_bytes()
    # a re-run changes nothing and uploads nothing
    again = move(stores, conn, copy=False)
    assert again.ok and migration.copy_tree(conn, artifacts, destination) == 0


def test_the_check_fails_on_a_lost_row_a_changed_tag_and_a_lost_artifact(stores, conn):
    _, target, _, runs, destination = stores
    move(stores, conn)
    engine = sa.create_engine(target)
    with engine.begin() as db:
        db.execute(sa.text("DELETE FROM registered_model_aliases WHERE alias = 'previous'"))
        db.execute(sa.text("UPDATE model_version_tags SET value = 'x' WHERE version = 3"))
    engine.dispose()
    where = s3.parse_uri(destination)
    s3.delete_object(conn, where.bucket, f"{where.prefix}/{runs[2]}/artifacts/weights/w2.bin")
    result = move(stores, conn, copy=False)
    assert not result.ok
    assert any(p.startswith("table registered_model_aliases: 2 rows before, 1 after") for p in result.problems)
    assert any(p.startswith("table model_version_tags: 3 rows before, 3 after, rows differ") for p in result.problems)
    assert any("w2.bin: not at s3://" in p for p in result.trees[0].problems)


def test_a_target_in_use_or_at_another_schema_revision_is_refused_before_anything_is_written(stores):
    source, target, artifacts, _, _ = stores
    migration.copy_store(source, target, artifacts)
    with pytest.raises(migration.MigrationError, match="table runs already has rows"):
        migration.copy_store(source, target, artifacts)
    fresh_root = artifacts.parent / "fresh"
    fresh_root.mkdir()
    fresh = make_target(fresh_root)
    engine = sa.create_engine(fresh)
    with engine.begin() as db:
        db.execute(sa.text("UPDATE alembic_version SET version_num = 'older0000'"))
    engine.dispose()
    with pytest.raises(migration.MigrationError, match=r"schema revision .* but older0000 .*mlflow db upgrade"):
        migration.copy_store(source, fresh, artifacts)
    engine = sa.create_engine(fresh)
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT COUNT(*) FROM runs")).scalar() == 0
    engine.dispose()


def test_the_command_reads_the_target_only_from_the_environment(monkeypatch, capsys):
    monkeypatch.delenv("VISIONLOOP_MLFLOW_DB_URL", raising=False)
    assert migration.main(["--artifacts-destination", "s3://b/p"]) == 2
    assert "set VISIONLOOP_MLFLOW_DB_URL" in capsys.readouterr().err


# ------------------------------------------------------------------ the prediction log


def local_log(root: Path):
    """A local log of two dates and a shadow part (the embedded default), and params that move it to S3."""
    from tasks.contracts import prediction_log as plog
    from tests.integration.test_s3_log import DAY2, make_params, table

    params = make_params(root, None)
    plog.append(params.base.paths.predictions, table(range(6)), part="b1")
    plog.append(params.base.paths.predictions, table(range(6, 9), date=DAY2, batch="b2"), part="b2")
    plog.append(params.base.paths.predictions, table(range(3), version="4", shadow=True), part="b1__shadow")
    return params


def on_s3(params, location: str):
    return params.model_copy(
        update={
            "base": params.base.model_copy(
                update={"storage": params.base.storage.model_copy(update={"predictions": location})}
            )
        }
    )


def test_the_local_log_moves_to_s3_part_by_part_and_the_check_proves_it(conn, tmp_path):
    from tasks.adapters import log_store
    from tasks.contracts import prediction_log as plog

    params = local_log(tmp_path)
    before = plog.read(params.base.paths.predictions)
    bucket = unique_bucket()
    s3.ensure_bucket(conn, bucket)
    stack = on_s3(params, f"s3://{bucket}/predictions")
    moved = migration.move_log(stack, conn)
    assert (moved.parts, moved.rows, moved.problems) == (3, before.num_rows, [])
    assert migration.move_log(stack, conn, copy=False).problems == []  # check-only reads S3 afresh
    assert log_store.open_dataset(f"s3://{bucket}/predictions", conn=conn).count_rows() == before.num_rows
    assert plog.read(log_store.log_root(stack)).sort_by("image_id").equals(before.sort_by("image_id"))


@pytest.mark.parametrize("damage", ["object-replaced", "object-deleted", "part-withdrawn", "extra-part"])
def test_the_log_check_fails_on_a_changed_lost_or_extra_part(conn, tmp_path, damage):
    from tasks.adapters import log_store
    from tests.integration.test_s3_log import table

    params = local_log(tmp_path)
    bucket = unique_bucket()
    s3.ensure_bucket(conn, bucket)
    location = f"s3://{bucket}/predictions"
    stack = on_s3(params, location)
    assert migration.move_log(stack, conn).problems == []
    live = log_store.live_parts(location, conn=conn)
    name = sorted(live)[0]
    if damage == "object-replaced":
        s3.put_bytes(conn, bucket, live[name].key, b"not the part that was published")
        expected = f"{name}: s3://{bucket}/{live[name].key} differs (sha256)"
    elif damage == "object-deleted":
        s3.delete_object(conn, bucket, live[name].key)
        expected = f"{name}: s3://{bucket}/{live[name].key} is named by a manifest but gone"
    elif damage == "part-withdrawn":
        s3.publish(conn, location, {}, publish_id=log_store.new_publish_id(), removed=[name])
        expected = f"{name}: not live in {location}"
    else:
        other = tmp_path / "other.parquet"
        import pyarrow.parquet as pq

        pq.write_table(table(range(100, 102)), other)
        s3.publish(conn, location, {"date=2026-01-09/stray.parquet": other}, publish_id=log_store.new_publish_id())
        expected = "date=2026-01-09/stray.parquet is live on S3 but not in"
    problems = migration.move_log(stack, conn, copy=False).problems
    assert any(expected in p for p in problems), problems


def test_a_log_the_params_keep_local_is_refused(conn, tmp_path):
    with pytest.raises(migration.MigrationError, match=r"base\.storage\.predictions is null"):
        migration.move_log(local_log(tmp_path), conn)
