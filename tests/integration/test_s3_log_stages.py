"""The stages on the server stack's storage: production batches *and* the prediction log on S3 (moto on 127.0.0.1).

Reuses the S3 production stack of ``test_s3_production`` (the tiny world uploaded, a brightness detector as the
champion). Predict logs to S3 the rows the all-local run logs; a second machine with an empty mirror finds every
batch logged and predicts nothing; the sampler's window and the doctor read the S3 log through their mirrors.
"""

from __future__ import annotations

import pytest

from tasks import doctor, predict
from tasks.adapters import log_store, s3
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.prediction_rows import window_parts
from tests.integration.test_s3_production import TIMING, env, params_data, server, stack  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def sorted_rows(table):
    return sorted(table.drop_columns([*TIMING, "image_uri"]).to_pylist(), key=lambda r: (r["image_id"], r["x1"] or 0))


@pytest.mark.slow  # ~13 s, most of it the stack's world and registry (shared with test_s3_production when merged)
def test_predict_logs_to_s3_what_the_local_run_logs_and_a_fresh_mirror_skips_it(stack, tmp_path):  # noqa: F811
    local = Params.model_validate(params_data(stack, tmp_path / "local", production=None))
    location = f"s3://{stack.bucket}/log"

    def on_s3(host: str) -> Params:
        data = params_data(stack, tmp_path / host, production=stack.location)
        data["base"]["storage"]["predictions"] = location
        return Params.model_validate(data)

    predict.run(local)
    first = predict.run(on_s3("host-a"))
    expected = sorted_rows(prediction_log.read(local.base.paths.predictions))
    assert sorted_rows(log_store.open_dataset(location).to_table()) == expected
    assert s3.unpublished_parts(s3.connect(), location) == []
    assert len(first.batches) == len(stack.batches)

    other = on_s3("host-b")  # an empty mirror: everything this version logged comes from S3
    assert predict.run(other).batches == []
    assert sorted_rows(prediction_log.read(other.base.paths.predictions)) == expected
    assert [p.path.name for p in window_parts(log_store.log_root(other), days=30)]
    _, findings = doctor.check_prediction_log(other)
    assert not findings, findings
