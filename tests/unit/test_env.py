"""Offline switches: OpenVINO/NNCF telemetry is declined through its own consent file."""

from __future__ import annotations

import pytest

from tasks.env import openvino_telemetry_opt_out


def test_openvino_telemetry_is_declined_where_no_choice_was_made(tmp_path, monkeypatch):
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    monkeypatch.setenv("HOME", str(tmp_path))
    assert OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.NO_FILE  # = it would send
    consent = openvino_telemetry_opt_out()
    assert consent == tmp_path / "intel" / "openvino_telemetry" and consent.read_text() == "0\n"
    assert OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.DECLINED


@pytest.mark.parametrize("choice", ["1\n", "0\n"])
def test_a_users_own_choice_is_left_alone(tmp_path, choice):
    consent = tmp_path / "intel" / "openvino_telemetry"
    consent.parent.mkdir()
    consent.write_text(choice)
    assert openvino_telemetry_opt_out(tmp_path) == consent and consent.read_text() == choice
