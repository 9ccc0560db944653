"""A champion trained on other classes than ``base.classes`` cannot be gated: the check names both lists."""

from __future__ import annotations

import json

import pytest

from tasks.contracts.model_version import CLASSES_TAG, ClassListError, check_classes

CLASSES = ["person", "car", "bicycle"]


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        pytest.param({CLASSES_TAG: json.dumps(CLASSES)}, None, id="same"),
        pytest.param({}, None, id="older-version-without-the-tag"),
        pytest.param(
            {CLASSES_TAG: json.dumps(["person", "car"])}, r"trained on classes \['person', 'car'\]", id="fewer"
        ),
        pytest.param(
            {CLASSES_TAG: json.dumps(["car", "person", "bicycle"])}, "base.classes is \\['person'", id="reordered"
        ),
        pytest.param({CLASSES_TAG: json.dumps([])}, "trained on classes \\[\\]", id="empty"),
        pytest.param({CLASSES_TAG: "person,car"}, "is not a JSON list", id="not-json"),
    ],
)
def test_a_champion_on_other_classes_is_named(tags, problem):
    where = "champion v3 of visionloop-detector"
    if problem is None:
        check_classes(tags, CLASSES, where=where)
        return
    with pytest.raises(ClassListError, match=problem) as raised:
        check_classes(tags, CLASSES, where=where)
    assert str(raised.value).startswith(where)
