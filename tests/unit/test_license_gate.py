"""The license gate (tasks.decisions.license_gate) and its params (gate.license): every refusal and exception path.

One table: each row is a record under a policy and exceptions, and exactly what is refused, which obligations are
shown, what the exceptions covered, the warnings and the exceptions that covered nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, LicenseException, LicenseParams, load_params
from tasks.contracts.license_record import Component, LicenseRecord
from tasks.decisions.license_gate import check_licenses
from tasks.env import PROJECT_ROOT

PKG = "pkg 1.0"
REF = "Ultralytics Enterprise License, contract 2026-042"
COMMERCIAL, OPEN = "commercial", "open-source"


def comp(license: str | None, name: str = PKG, kind: str = "package") -> Component:
    return Component(kind=kind, name=name, license=license, source="test")  # type: ignore[arg-type]


def exc(license: str, component: str | None = None, reference: str = REF) -> LicenseException:
    return LicenseException(license=license, component=component, reference=reference)


def case(
    id: str,
    policy: str,
    record: str | tuple[Component, ...] | None,
    exceptions: tuple[LicenseException, ...] = (),
    *,
    refused: set[tuple[str, str]] = frozenset(),  # (license, family)
    obligations: set[tuple[str, str]] = frozenset(),  # (license, family)
    excepted: set[str] = frozenset(),  # licenses an exception covered
    warnings: tuple[str, ...] = (),  # one substring per warning, in order
    unused: tuple[str, ...] = (),  # licenses of the exceptions that covered nothing
):
    components = record if isinstance(record, tuple) else (comp(record),)
    return pytest.param(
        policy, components, exceptions, refused, obligations, excepted, warnings, unused, id=f"{policy}:{id}"
    )


AGPL_OBL = {("AGPL-3.0-only", "AGPL")}
ULTRA = comp("AGPL-3.0-only", "ultralytics 8.4.190", "model_code")
THOP = comp("AGPL-3.0-only", "ultralytics-thop 2.0.14")

TABLE = [
    # ---- every refused family under commercial
    case("agpl", COMMERCIAL, "AGPL-3.0-only", refused={("AGPL-3.0-only", "AGPL")}, obligations=AGPL_OBL),
    case("agpl-deprecated-id", COMMERCIAL, "AGPL-3.0", refused={("AGPL-3.0-only", "AGPL")}, obligations=AGPL_OBL),
    case(
        "gpl-or-later",
        COMMERCIAL,
        "GPL-3.0-or-later",
        refused={("GPL-3.0-or-later", "GPL")},
        obligations={("GPL-3.0-or-later", "GPL")},
    ),
    case(
        "gpl-plus",
        COMMERCIAL,
        "GPL-2.0+",
        refused={("GPL-2.0-or-later", "GPL")},
        obligations={("GPL-2.0-or-later", "GPL")},
    ),
    case(
        "gpl-with-classpath-keeps-gpl",
        COMMERCIAL,
        "GPL-2.0-only WITH Classpath-exception-2.0",
        refused={("GPL-2.0-only WITH Classpath-exception-2.0", "GPL")},
        obligations={("GPL-2.0-only WITH Classpath-exception-2.0", "GPL")},
    ),
    case("sspl", COMMERCIAL, "SSPL-1.0", refused={("SSPL-1.0", "SSPL")}, obligations={("SSPL-1.0", "SSPL")}),
    case("busl", COMMERCIAL, "BUSL-1.1", refused={("BUSL-1.1", "BUSL")}, obligations={("BUSL-1.1", "BUSL")}),
    case("pml", COMMERCIAL, "PML-1.0", refused={("PML-1.0", "PML")}, obligations={("PML-1.0", "PML")}),
    case(
        "cc-by-nc",
        COMMERCIAL,
        "CC-BY-NC-4.0",
        refused={("CC-BY-NC-4.0", "non-commercial")},
        obligations={("CC-BY-NC-4.0", "non-commercial")},
    ),
    case(
        "cc-by-nc-sa",
        COMMERCIAL,
        "CC-BY-NC-SA-4.0",
        refused={("CC-BY-NC-SA-4.0", "non-commercial")},
        obligations={("CC-BY-NC-SA-4.0", "non-commercial")},
    ),
    case(
        "classifier-agpl-or-later",
        COMMERCIAL,
        "License :: OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)",
        refused={("AGPL-3.0-or-later", "AGPL")},
        obligations={("AGPL-3.0-or-later", "AGPL")},
    ),
    case(
        "old-license-name-agpl",
        COMMERCIAL,
        "GNU Affero General Public License v3",
        refused={("AGPL-3.0-only", "AGPL")},
        obligations=AGPL_OBL,
    ),
    # ---- unknown and unclassified fail closed under commercial
    case("none", COMMERCIAL, None, refused={("UNKNOWN", "unknown")}),
    case("empty", COMMERCIAL, "", refused={("UNKNOWN", "unknown")}),
    case("blank", COMMERCIAL, "   ", refused={("UNKNOWN", "unknown")}),
    case("UNKNOWN", COMMERCIAL, "UNKNOWN", refused={("UNKNOWN", "unknown")}),
    case("NOASSERTION", COMMERCIAL, "NOASSERTION", refused={("NOASSERTION", "unknown")}),
    case("garbage", COMMERCIAL, "MIT AND ((", refused={("MIT AND ((", "unknown")}),
    case(
        "license-text",
        COMMERCIAL,
        "Copyright (c) 2020 Someone\nPermission is hereby granted, free of charge",
        refused={("Copyright (c) 2020 Someone\nPermission is hereby granted, free of charge", "unknown")},
    ),
    case(
        "proprietary-classifier",
        COMMERCIAL,
        "License :: Other/Proprietary License",
        refused={("License :: Other/Proprietary License", "unknown")},
    ),
    case("unclassified-spdx", COMMERCIAL, "Artistic-2.0", refused={("Artistic-2.0", "unclassified")}),
    case("licenseref", COMMERCIAL, "LicenseRef-Acme-EULA", refused={("LicenseRef-Acme-EULA", "unclassified")}),
    case("empty-record", COMMERCIAL, (), refused={("UNKNOWN", "unknown")}),
    # ---- AND needs every part, OR any alternative
    case(
        "and-one-bad",
        COMMERCIAL,
        "MIT AND GPL-3.0-only",
        refused={("GPL-3.0-only", "GPL")},
        obligations={("MIT", "permissive"), ("GPL-3.0-only", "GPL")},
    ),
    case(
        "and-one-unknown",
        COMMERCIAL,
        "Apache-2.0 AND UNKNOWN",
        refused={("UNKNOWN", "unknown")},
        obligations={("Apache-2.0", "Apache")},
    ),
    case(
        "or-all-bad",
        COMMERCIAL,
        "AGPL-3.0-only OR SSPL-1.0",
        refused={("AGPL-3.0-only", "AGPL"), ("SSPL-1.0", "SSPL")},
        obligations=AGPL_OBL,
    ),
    case(
        "or-unknown-and-gpl",
        COMMERCIAL,
        "UNKNOWN OR GPL-3.0-only",
        refused={("UNKNOWN", "unknown"), ("GPL-3.0-only", "GPL")},
        obligations={("GPL-3.0-only", "GPL")},
    ),
    case("or-chooses-permissive", COMMERCIAL, "MIT OR GPL-3.0-only", obligations={("MIT", "permissive")}),
    case("or-order-irrelevant", COMMERCIAL, "GPL-3.0-only OR MIT", obligations={("MIT", "permissive")}),
    case("or-lightest-passing", COMMERCIAL, "LGPL-3.0-only OR Apache-2.0", obligations={("Apache-2.0", "Apache")}),
    case("or-over-unknown", COMMERCIAL, "UNKNOWN OR MIT", obligations={("MIT", "permissive")}),
    case(
        "nested",
        COMMERCIAL,
        "(MIT OR GPL-3.0-only) AND BSD-3-Clause",
        obligations={("MIT", "permissive"), ("BSD-3-Clause", "permissive")},
    ),
    # ---- allowed under commercial, obligation shown
    case("lgpl", COMMERCIAL, "LGPL-2.1-or-later", obligations={("LGPL-2.1-or-later", "LGPL")}),
    case(
        "opencv-with-ffmpeg",
        COMMERCIAL,
        "Apache-2.0 AND LGPL-2.1-or-later",
        obligations={("Apache-2.0", "Apache"), ("LGPL-2.1-or-later", "LGPL")},
    ),
    case("mpl", COMMERCIAL, "MPL-2.0", obligations={("MPL-2.0", "MPL")}),
    case("boost-is-not-busl", COMMERCIAL, "BSL-1.0", obligations={("BSL-1.0", "permissive")}),
    case("cc0-no-obligation", COMMERCIAL, "CC0-1.0"),
    case("lowercase-id", COMMERCIAL, "mit", obligations={("MIT", "permissive")}),
    case("classifier-mit", COMMERCIAL, "License :: OSI Approved :: MIT License", obligations={("MIT", "permissive")}),
    case("old-name-apache", COMMERCIAL, "Apache License, Version 2.0", obligations={("Apache-2.0", "Apache")}),
    case(
        "classifier-psf",
        COMMERCIAL,
        "License :: OSI Approved :: Python Software Foundation License",
        obligations={("PSF-2.0", "permissive")},
    ),
    # ---- exceptions
    case("exception-by-id", COMMERCIAL, "AGPL-3.0-only", (exc("AGPL-3.0-only"),), excepted={"AGPL-3.0-only"}),
    case("exception-deprecated-id", COMMERCIAL, "AGPL-3.0-only", (exc("AGPL-3.0"),), excepted={"AGPL-3.0-only"}),
    case("exception-by-glob", COMMERCIAL, "AGPL-3.0-or-later", (exc("AGPL-*"),), excepted={"AGPL-3.0-or-later"}),
    case("exception-glob-any-case", COMMERCIAL, "AGPL-3.0-only", (exc("agpl-*"),), excepted={"AGPL-3.0-only"}),
    case(
        "exception-component-matches", COMMERCIAL, (ULTRA,), (exc("AGPL-*", "ultralytics"),), excepted={"AGPL-3.0-only"}
    ),
    case(
        "exception-component-other-package",
        COMMERCIAL,
        (THOP,),
        (exc("AGPL-*", "ultralytics"),),
        refused={("AGPL-3.0-only", "AGPL")},
        obligations=AGPL_OBL,
        unused=("AGPL-*",),
    ),
    case(
        "exception-component-other-version",
        COMMERCIAL,
        (ULTRA,),
        (exc("AGPL-*", "ultralytics 8.3.0"),),
        refused={("AGPL-3.0-only", "AGPL")},
        obligations=AGPL_OBL,
        unused=("AGPL-*",),
    ),
    case(
        "exception-other-license",
        COMMERCIAL,
        "AGPL-3.0-only",
        (exc("GPL-*"),),
        refused={("AGPL-3.0-only", "AGPL")},
        obligations=AGPL_OBL,
        unused=("GPL-*",),
    ),
    case(
        "exception-unknown",
        COMMERCIAL,
        (comp(None, "acme-sdk 2"),),
        (exc("UNKNOWN", "acme-sdk"),),
        excepted={"UNKNOWN"},
    ),
    case(
        "exception-declared-text",
        COMMERCIAL,
        (comp("License :: Other/Proprietary License", "tensorrt 10.9"),),
        (exc("License :: Other/Proprietary License", "tensorrt"),),
        excepted={"License :: Other/Proprietary License"},
    ),
    case(
        "exception-base-covers-with",
        COMMERCIAL,
        "GPL-2.0-only WITH Classpath-exception-2.0",
        (exc("GPL-2.0-only"),),
        excepted={"GPL-2.0-only WITH Classpath-exception-2.0"},
    ),
    case(
        "exception-in-and",
        COMMERCIAL,
        "MIT AND AGPL-3.0-only",
        (exc("AGPL-*"),),
        obligations={("MIT", "permissive")},
        excepted={"AGPL-3.0-only"},
    ),
    case(
        "exception-not-needed-in-or",
        COMMERCIAL,
        "AGPL-3.0-only OR MIT",
        (exc("AGPL-*"),),
        obligations={("MIT", "permissive")},
        unused=("AGPL-*",),
    ),
    case("exception-opens-or", COMMERCIAL, "AGPL-3.0-only OR GPL-3.0-only", (exc("GPL-*"),), excepted={"GPL-3.0-only"}),
    case(
        "exception-unused-clean-record",
        COMMERCIAL,
        "MIT",
        (exc("AGPL-*"),),
        obligations={("MIT", "permissive")},
        unused=("AGPL-*",),
    ),
    case(
        "first-exception-wins",
        COMMERCIAL,
        "AGPL-3.0-only",
        (exc("AGPL-*"), exc("AGPL-3.0-only")),
        excepted={"AGPL-3.0-only"},
        unused=("AGPL-3.0-only",),
    ),
    # ---- open-source: nothing refused, obligations shown, unknowns and use restrictions warned about
    case("agpl", OPEN, "AGPL-3.0-only", obligations=AGPL_OBL),
    case("gpl", OPEN, "GPL-3.0-only", obligations={("GPL-3.0-only", "GPL")}),
    case("none", OPEN, None, warnings=("pkg 1.0 (package): UNKNOWN [unknown]: no license declared",)),
    case("garbage", OPEN, "MIT AND ((", warnings=("not a license expression the gate can read",)),
    case("unclassified", OPEN, "Artistic-2.0", warnings=("Artistic-2.0 [unclassified]",)),
    case("pml", OPEN, "PML-1.0", obligations={("PML-1.0", "PML")}, warnings=("PML-1.0 is not an open-source license",)),
    case(
        "cc-by-nc",
        OPEN,
        "CC-BY-NC-4.0",
        obligations={("CC-BY-NC-4.0", "non-commercial")},
        warnings=("CC-BY-NC-4.0 is not an open-source license",),
    ),
    case("or-chooses-permissive", OPEN, "MIT OR GPL-3.0-only", obligations={("MIT", "permissive")}),
    case("exception-replaces-obligation", OPEN, "AGPL-3.0-only", (exc("AGPL-*"),), excepted={"AGPL-3.0-only"}),
    case("empty-record", OPEN, (), warnings=("lists no component",)),
]


@pytest.mark.parametrize(
    ("policy", "components", "exceptions", "refused", "obligations", "excepted", "warnings", "unused"), TABLE
)
def test_license_gate(policy, components, exceptions, refused, obligations, excepted, warnings, unused):
    params = LicenseParams(policy=policy, exceptions=exceptions)
    verdict = check_licenses(LicenseRecord(components), params)
    assert verdict.policy == policy
    assert {(r.license, r.family) for r in verdict.refusals} == set(refused)
    assert verdict.allowed is not refused
    assert {(o.license, o.family) for o in verdict.obligations} == set(obligations)
    assert {e.license for e in verdict.excepted} == set(excepted)
    assert all(e.reference == REF for e in verdict.excepted)
    assert len(verdict.warnings) == len(warnings)
    for found, wanted in zip(verdict.warnings, warnings, strict=True):
        assert wanted in found
    assert tuple(e.license for e in verdict.unused_exceptions) == unused
    names = {c.name for c in components} or {"<record>"}
    for refusal, reason in zip(verdict.refusals, verdict.reasons(), strict=True):
        assert refusal.component in names
        assert refusal.component in reason and refusal.license in reason and f"[{refusal.family}]" in reason
        if refusal.component != "<record>":
            assert "gate.license.exceptions" in refusal.why  # the way out is named


def test_obligations_say_what_must_be_done():
    licenses = ["AGPL-3.0-only", "GPL-3.0-only", "LGPL-2.1-only", "MPL-2.0", "Apache-2.0", "MIT", "BSD-3-Clause"]
    record = LicenseRecord(tuple(comp(license, name) for license, name in zip(licenses, "abcdefg", strict=True)))
    what = {o.component: o.what for o in check_licenses(record, LicenseParams()).obligations}
    assert "source" in what["a"] and "network" in what["a"]
    assert "source" in what["b"] and "binary" in what["b"]
    assert "relink or replace" in what["c"] and "FFmpeg" in what["c"]
    assert "modified files" in what["d"]
    assert "NOTICE" in what["e"]
    assert what["f"] == what["g"] and "notice" in what["f"]


def test_refusal_names_the_declared_text_it_read():
    verdict = check_licenses(
        LicenseRecord((comp("GNU Affero General Public License v3", "old-pkg 0.1"),)), LicenseParams(policy=COMMERCIAL)
    )
    (refusal,) = verdict.refusals
    assert refusal.component == "old-pkg 0.1" and refusal.license == "AGPL-3.0-only"
    assert "GNU Affero General Public License v3" in refusal.why


# ------------------------------------------------------------------ a realistic record under both policies

YOLO_RECORD = LicenseRecord(
    (
        comp("AGPL-3.0-only", "ultralytics 8.4.190", "model_code"),
        comp("AGPL-3.0-only", "trained from scratch here", "weights"),  # Ultralytics' reading: AGPL like the code
        comp("CC0-1.0", "world", "data"),
        comp("MIT", "onnxruntime 1.32.0", "runtime"),
        comp("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0", "numpy 2.3.5"),
        comp("Apache-2.0 AND LGPL-2.1-or-later", "opencv-python 4.12.0.88"),  # its wheels bundle LGPL FFmpeg
        comp("License :: OSI Approved :: Python Software Foundation License", "typing_extensions 4.15.0"),
    )
)
YOLO_OBLIGATIONS = {
    ("onnxruntime 1.32.0", "permissive"),
    ("numpy 2.3.5", "permissive"),
    ("opencv-python 4.12.0.88", "Apache"),
    ("opencv-python 4.12.0.88", "LGPL"),
    ("typing_extensions 4.15.0", "permissive"),
}
AGPL_PARTS = {("ultralytics 8.4.190", "AGPL"), ("trained from scratch here", "AGPL")}


def test_yolo_record_open_source_shows_every_obligation():
    verdict = check_licenses(YOLO_RECORD, LicenseParams(policy=OPEN))
    assert verdict.allowed and not verdict.refusals and not verdict.warnings
    assert {(o.component, o.family) for o in verdict.obligations} == YOLO_OBLIGATIONS | AGPL_PARTS


def test_yolo_record_commercial_refuses_the_agpl_parts():
    verdict = check_licenses(YOLO_RECORD, LicenseParams(policy=COMMERCIAL))
    assert not verdict.allowed
    assert {(r.component, r.family) for r in verdict.refusals} == AGPL_PARTS
    assert {(o.component, o.family) for o in verdict.obligations} == YOLO_OBLIGATIONS | AGPL_PARTS


def test_yolo_record_commercial_with_enterprise_license():
    enterprise = exc("AGPL-*")  # the Enterprise license covers the code and the weights trained with it
    verdict = check_licenses(YOLO_RECORD, LicenseParams(policy=COMMERCIAL, exceptions=(enterprise,)))
    assert verdict.allowed and not verdict.unused_exceptions
    assert {(e.component, e.reference) for e in verdict.excepted} == {(c, REF) for c, _ in AGPL_PARTS}
    assert {(o.component, o.family) for o in verdict.obligations} == YOLO_OBLIGATIONS


def test_yolo_record_exception_limited_to_the_package_leaves_the_weights():
    verdict = check_licenses(YOLO_RECORD, LicenseParams(policy=COMMERCIAL, exceptions=(exc("AGPL-*", "ultralytics"),)))
    assert [(r.component, r.family) for r in verdict.refusals] == [("trained from scratch here", "AGPL")]


def test_rfdetr_record_commercial():
    base = (
        comp("Apache-2.0", "rfdetr 1.3.0", "model_code"),
        comp("CC0-1.0", "world", "data"),
        comp("MIT", "onnxruntime 1.32.0", "runtime"),
    )
    nano = LicenseRecord((*base, comp("Apache-2.0", "trained from scratch here", "weights")))
    assert check_licenses(nano, LicenseParams(policy=COMMERCIAL)).allowed
    xl = LicenseRecord((*base, comp("PML-1.0", "rf-detr-xlarge.pth (Roboflow)", "weights")))
    verdict = check_licenses(xl, LicenseParams(policy=COMMERCIAL))
    assert [(r.component, r.family) for r in verdict.refusals] == [("rf-detr-xlarge.pth (Roboflow)", "PML")]


# ------------------------------------------------------------------ params: gate.license

DEFAULT = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def write_license(tmp_path: Path, section: dict) -> Path:
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data["gate"]["license"] = section
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_license_params():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.gate.license.policy == "open-source"  # the default demo trains YOLO (AGPL)
    assert params.gate.license.exceptions == ()
    assert params.gate.license.data == {"historical": "CC0-1.0", "production": "CC0-1.0"}
    assert params.gate.license.weights == {}
    assert LicenseParams() == params.gate.license


def test_exception_loads_from_yaml(tmp_path):
    text = f"""
policy: commercial
exceptions:
  - license: AGPL-*
    component: ultralytics
    reference: "{REF}"
    note: renewed yearly
data:
  historical: CC0-1.0
  customer-a: LicenseRef-Customer-A-Agreement
weights:
  {"A" * 64}: Apache-2.0
"""
    params = load_params(write_license(tmp_path, yaml.safe_load(text)))
    (exception,) = params.gate.license.exceptions
    assert (exception.license, exception.component, exception.reference) == ("AGPL-*", "ultralytics", REF)
    assert params.gate.license.data["customer-a"] == "LicenseRef-Customer-A-Agreement"
    assert params.gate.license.weights == {"a" * 64: "Apache-2.0"}  # hashes kept lower case


GOOD = {"license": "AGPL-*", "reference": REF}


@pytest.mark.parametrize(
    ("section", "key_path", "message"),
    [
        pytest.param(
            {"exceptions": [{**GOOD, "reference": ""}]}, "exceptions.0.reference", "at least 1", id="empty-reference"
        ),
        pytest.param(
            {"exceptions": [{**GOOD, "reference": "   "}]}, "exceptions.0.reference", "at least 1", id="blank-reference"
        ),
        pytest.param(
            {"exceptions": [{"license": "AGPL-*"}]}, "exceptions.0.reference", "Field required", id="no-reference"
        ),
        pytest.param(
            {"exceptions": [{**GOOD, "license": ""}]}, "exceptions.0.license", "at least 1", id="empty-license"
        ),
        pytest.param(
            {"exceptions": [{**GOOD, "licence": "MIT"}]},
            "exceptions.0.licence",
            "Extra inputs",
            id="unknown-exception-key",
        ),
        pytest.param({"policy": "proprietary"}, "policy", "'open-source' or 'commercial'", id="unknown-policy"),
        pytest.param({"polcy": "commercial"}, "polcy", "Extra inputs", id="unknown-key"),
        pytest.param({"data": {"world": ""}}, "data.world", "at least 1", id="empty-data-license"),
    ],
)
def test_bad_license_params_name_the_key(tmp_path, section, key_path, message):
    with pytest.raises(ConfigError) as err:
        load_params(write_license(tmp_path, section))
    assert f"  gate.license.{key_path}: " in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("declared", "spdx"),
    [
        pytest.param("ISC License", {"ISC"}, id="isc-license"),
        pytest.param("3-Clause BSD License", {"BSD-3-Clause"}, id="protobuf"),
        pytest.param("2-clause BSD License", {"BSD-2-Clause"}, id="imagehash"),
        pytest.param("New BSD", {"BSD-3-Clause"}, id="click-plugins"),
        pytest.param("PSFL", {"PSF-2.0"}, id="defusedxml"),
        pytest.param("OSI Approved :: Apache Software License", {"Apache-2.0"}, id="classifier-without-license-prefix"),
        pytest.param("BSD License AND MIT License", {"BSD-3-Clause", "MIT"}, id="classifiers-joined-by-the-probe"),
        pytest.param("Apache Software License OR MIT License", {"Apache-2.0"}, id="names-or-names"),
        pytest.param("Apache-2.0 AND CNRI-Python", {"Apache-2.0", "CNRI-Python"}, id="regex"),
        pytest.param("BSD-3-Clause AND TCL", {"BSD-3-Clause", "TCL"}, id="tcl"),
        pytest.param("ZPL-2.1", {"ZPL-2.1"}, id="zope"),
    ],
)
def test_names_packages_declare_are_read_as_their_spdx_ids(declared, spdx):
    verdict = check_licenses(LicenseRecord((comp(declared),)), LicenseParams(policy=COMMERCIAL))
    assert verdict.allowed, verdict.reasons()
    assert {o.license for o in verdict.obligations} == spdx


def test_the_inference_path_of_an_exported_artifact_passes_under_commercial():
    """What the inference probe reads from the real metadata of the distributions an ONNX or OpenVINO artifact
    imports (tests/unit/test_inference_licenses.py) is judged, not refused as unreadable."""
    from importlib import metadata

    from tasks.targets.inference_probe import read_license

    path = ("numpy", "opencv-python", "onnxruntime", "openvino", "openvino-telemetry", "packaging")
    record = LicenseRecord(tuple(comp(read_license(metadata.distribution(d).metadata)[0], d) for d in path))
    verdict = check_licenses(record, LicenseParams(policy=COMMERCIAL))
    assert verdict.allowed, verdict.reasons()
