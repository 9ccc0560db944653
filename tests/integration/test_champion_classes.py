"""A champion trained on other classes than ``base.classes`` stops the cycle before anything is written, naming both
lists (a candidate of one family gated against a champion of the other is scored on the same labels only when
their class lists agree)."""

from __future__ import annotations

import pytest

from tasks import cycle, promote, registry
from tasks.contracts.model_version import ClassListError
from tasks.contracts.train_files import parent_path
from tests.integration.test_license_record import params_with, trained

pytestmark = pytest.mark.integration


def test_a_champion_on_other_classes_is_refused_before_anything_is_written(tmp_path):
    params = trained(params_with(tmp_path))
    version = registry.run(params).version
    assert promote.run(params, version=version, decision="promote").action == "promote"
    assert cycle.fetch_champion(params) is not None  # same classes: fetched
    parent_path(params).unlink()
    fewer = params.model_copy(update={"base": params.base.model_copy(update={"classes": params.base.classes[:-1]})})
    with pytest.raises(ClassListError, match=rf"champion v{version} of .* was trained on classes \["):
        cycle.fetch_champion(fewer)
    assert not parent_path(params).exists()  # nothing handed to training
