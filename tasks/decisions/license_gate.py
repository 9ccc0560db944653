"""The license gate: may a model version ship, given its license record and ``gate.license``?

Pure and table-tested (``tests/unit/test_license_gate.py``): :func:`check_licenses` reads a
:class:`~tasks.contracts.license_record.LicenseRecord` and returns a :class:`LicenseVerdict` with the refusals, the
obligations, the warnings and what the exceptions covered. Nothing here reads metadata, MLflow or files.

Each component's ``license`` is taken as declared. An old metadata name or trove classifier (``GNU Affero General
Public License v3``, ``License :: OSI Approved :: MIT License``) is first mapped to its SPDX id by :data:`NAMES`;
then the SPDX expression is parsed by ``license-expression`` (deprecated ids and ``+`` become ``-only`` /
``-or-later``). ``A AND B`` needs every part, ``A OR B`` takes the alternative that passes with the least burden
(its obligations are the ones shown), ``A WITH exception`` keeps the family of ``A``: a linking exception narrows
what the copyleft reaches, which is a reading for a person, so the gate stays closed and an exception entry opens it.

Under ``commercial`` these families refuse unless an exception covers the component's license: AGPL, GPL (not
LGPL), SSPL, BUSL, PML (Roboflow's Platform Model License), non-commercial (``CC-BY-NC*``, PolyForm Noncommercial),
unknown (nothing declared, ``UNKNOWN``/``NOASSERTION``/``NONE``, unreadable) and unclassified (a license this module
has no rule for): the gate fails closed. LGPL, MPL/EPL/CDDL, CC-BY-SA and the permissive licenses pass with their
obligation shown. Under ``open-source`` nothing is refused: the obligations are shown, unknown and unclassified
licenses and use-restricting ones (PML, BUSL, non-commercial) are warnings.

An exception matches a component when its ``license`` glob matches the license id (with or without its ``WITH``
part; ``UNKNOWN`` or the declared text for an unknown one) and its ``component`` (if set) is the first words of the
component's name; a covered license has neither refusal nor obligation (the agreement's terms replace it) and is
listed in ``excepted`` with the reference. Exceptions that covered nothing are listed in ``unused_exceptions``.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from license_expression import ExpressionError, LicenseSymbol, LicenseWithExceptionSymbol, get_spdx_licensing

from tasks.config.license import LicenseException, LicenseParams, LicensePolicy
from tasks.contracts.license_record import Component, LicenseRecord

UNKNOWN = "UNKNOWN"
FIX = "add a gate.license.exceptions entry naming the agreement or review if you hold one"


@dataclass(frozen=True)
class Family:
    """A group of licenses with one rule: refused under ``commercial`` or not, and what must be done."""

    name: str
    patterns: tuple[str, ...]  # globs over SPDX ids, case-insensitive; the first family that matches wins
    obligation: str  # "" = nothing to do
    refusal: str = ""  # why it may not ship in a proprietary product; "" = allowed under commercial
    restricts_use: bool = False  # a warning under open-source: not an open-source license
    burden: int = 1  # for choosing among OR alternatives: the lightest that passes is taken


_ATTRIBUTION = "keep the copyright and license notice (attribution)"
_FILE_LEVEL = (
    "publish the source of modified files of it under the same license (file-level copyleft); keep its notices"
)
FAMILIES: tuple[Family, ...] = (
    Family(
        "AGPL",
        ("AGPL-*",),
        burden=5,
        obligation="offer the service's complete source (with modifications) to every user who interacts with it "
        "over a network (AGPL-3.0 section 13)",
        refusal="the service's complete source would have to be offered to its users",
    ),
    Family(
        "LGPL",
        ("LGPL-*", "LGPLLR"),
        burden=3,
        obligation="let users relink or replace the library (ship it as a separate, replaceable shared library), "
        "and ship its license, notice and source or a written offer (e.g. FFmpeg in opencv-python wheels)",
    ),
    Family(
        "GPL",
        ("GPL-*",),
        burden=4,
        obligation="ship the complete corresponding source (or a written offer) with every distributed binary; "
        "the combined work is under the GPL",
        refusal="distributing it puts the product under the GPL, source included",
    ),
    Family(
        "SSPL",
        ("SSPL-*",),
        burden=5,
        obligation="offering it as a service requires publishing the source of the whole service stack",
        refusal="offering it as a service requires publishing the whole service stack's source",
    ),
    # Business Source License; BSL-1.0 is the Boost license (permissive, below), BSL-1.1 only ever means Business
    Family(
        "BUSL",
        ("BUSL-*", "BSL-1.1"),
        burden=6,
        restricts_use=True,
        obligation="production use only as the licensor's Additional Use Grant allows, until its Change Date",
        refusal="production use needs the licensor's grant until the Change Date",
    ),
    Family(
        "PML",
        ("PML-*", "LicenseRef-PML-*"),
        burden=6,
        restricts_use=True,
        obligation="Roboflow's Platform Model License: use only under Roboflow's platform terms",
        refusal="Roboflow's Platform Model License ties its use to Roboflow's platform terms",
    ),
    Family(
        "non-commercial",
        ("CC-BY-NC-*", "PolyForm-Noncommercial-*"),
        burden=6,
        restricts_use=True,
        obligation="no commercial use; attribute the source",
        refusal="it forbids commercial use",
    ),
    Family("MPL", ("MPL-*",), obligation=_FILE_LEVEL, burden=2),
    Family("EPL", ("EPL-*",), obligation=_FILE_LEVEL, burden=2),
    Family("CDDL", ("CDDL-*",), obligation=_FILE_LEVEL, burden=2),
    Family(
        "CC-BY-SA",
        ("CC-BY-SA-*",),
        burden=2,
        obligation="attribute the source; share adapted material under the same license",
    ),
    Family("CC-BY", ("CC-BY-[0-9]*",), obligation="attribute the source (name, license, changes)"),
    Family(
        "Apache",
        ("Apache-*",),
        obligation="keep the license, the copyright notices and the NOTICE file; mark files you changed",
    ),
    Family("public domain", ("CC0-1.0", "Unlicense", "0BSD", "MIT-0"), obligation="", burden=0),
    Family(
        "permissive",
        (
            "MIT",
            "MIT-*",
            "X11",
            "BSD-*",
            "ISC",
            "Zlib",
            "PSF-2.0",
            "Python-2.0*",
            "HPND*",
            "BSL-1.0",
            "NCSA",
            "UPL-1.0",
            "PostgreSQL",
            "Unicode-*",
            "BlueOak-1.0.0",
            "CDLA-Permissive-*",
            "CNRI-Python",
            "TCL",
            "ZPL-2.*",
            # licenses of libraries wheels vendor (tasks.targets.inference_licenses.BUNDLED_LIBRARIES)
            "OpenSSL",
            "libpng-2.0",
            "Libpng",
            "IJG",
            "libtiff",
            "FTL",
        ),
        obligation=_ATTRIBUTION,
    ),
    # what the team declares as its own (its cameras' images, its annotations): nothing to do
    Family("owned", ("LicenseRef-Owned", "LicenseRef-Owned-*"), obligation="", burden=0),
)
UNKNOWN_FAMILY = Family("unknown", (), obligation="", burden=8, refusal="no license declared")
UNCLASSIFIED = Family("unclassified", (), obligation="", burden=7, refusal="the gate has no rule for this license")
# what metadata writes when it declares nothing (UNLICENSED: npm's "all rights reserved"; Proprietary: ask)
NOT_DECLARED = {"unknown", "noassertion", "none", "unlicensed", "proprietary", "other/proprietary license"}

# Old metadata names and trove classifiers (lower case, without "License :: OSI Approved :: " / "License :: ") ->
# SPDX. Classifiers that name no version map to the version that carries the same obligation ("BSD License": every
# BSD variant means "keep the notice"; "GPL": any version, as the GPL says when none is named).
NAMES: dict[str, str] = {
    "gnu affero general public license v3": "AGPL-3.0-only",
    "gnu affero general public license v3.0": "AGPL-3.0-only",
    "gnu affero general public license v3 or later (agplv3+)": "AGPL-3.0-or-later",
    "agplv3": "AGPL-3.0-only",
    "agplv3+": "AGPL-3.0-or-later",
    "gnu general public license (gpl)": "GPL-1.0-or-later",
    "gnu general public license v2 (gplv2)": "GPL-2.0-only",
    "gnu general public license v2 or later (gplv2+)": "GPL-2.0-or-later",
    "gnu general public license v3 (gplv3)": "GPL-3.0-only",
    "gnu general public license v3 or later (gplv3+)": "GPL-3.0-or-later",
    "gpl": "GPL-1.0-or-later",
    "gplv2": "GPL-2.0-only",
    "gplv3": "GPL-3.0-only",
    "gnu lesser general public license v2 (lgplv2)": "LGPL-2.0-only",
    "gnu lesser general public license v2 or later (lgplv2+)": "LGPL-2.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0-only",
    "gnu lesser general public license v3 or later (lgplv3+)": "LGPL-3.0-or-later",
    "gnu library or lesser general public license (lgpl)": "LGPL-2.0-or-later",
    "lgpl": "LGPL-2.0-or-later",
    "lgplv3": "LGPL-3.0-only",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "mozilla public license 1.1 (mpl 1.1)": "MPL-1.1",
    "eclipse public license 2.0 (epl-2.0)": "EPL-2.0",
    "apache software license": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0",
    "mit license": "MIT",
    "mit no attribution license (mit-0)": "MIT-0",
    "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause",
    "bsd 3-clause": "BSD-3-Clause",
    "isc license (iscl)": "ISC",
    "python software foundation license": "PSF-2.0",
    "the unlicense (unlicense)": "Unlicense",
    "zlib/libpng license": "Zlib",
    "boost software license 1.0 (bsl-1.0)": "BSL-1.0",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "universal permissive license (upl)": "UPL-1.0",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0",
    # as packages on this stack write them in their License field
    "isc license": "ISC",
    "new bsd": "BSD-3-Clause",
    "3-clause bsd license": "BSD-3-Clause",
    "2-clause bsd license": "BSD-2-Clause",
    "freebsd": "BSD-2-Clause",
    "psfl": "PSF-2.0",
}
_CLASSIFIER_PREFIX = re.compile(r"^(license\s*::\s*)?(osi approved\s*::\s*)?")
_OPERATOR = re.compile(r"\s+(AND|OR)\s+")


@dataclass(frozen=True)
class Refusal:
    """A component that may not ship: which license of it, its family, and why."""

    component: str
    kind: str
    license: str
    family: str
    why: str


@dataclass(frozen=True)
class Obligation:
    """What shipping a component under one of its licenses requires."""

    component: str
    kind: str
    license: str
    family: str
    what: str


@dataclass(frozen=True)
class Excepted:
    """A component's license that an exception covered (its terms replace the license's)."""

    component: str
    kind: str
    license: str
    reference: str
    note: str | None


@dataclass(frozen=True)
class LicenseVerdict:
    """The license gate's answer for one model version."""

    policy: LicensePolicy
    allowed: bool
    refusals: tuple[Refusal, ...]
    obligations: tuple[Obligation, ...]
    warnings: tuple[str, ...]
    excepted: tuple[Excepted, ...]
    unused_exceptions: tuple[LicenseException, ...]

    def reasons(self) -> list[str]:
        """One line per refusal (``ultralytics 8.4.190 (model_code): AGPL-3.0-only [AGPL] refused: ...``)."""
        return [f"{r.component} ({r.kind}): {r.license} [{r.family}] refused: {r.why}" for r in self.refusals]


@dataclass(frozen=True)
class _Leaf:
    """One license of a component's expression, resolved."""

    license: str  # as shown: SPDX id, with its WITH part; UNKNOWN or the declared text when unknown
    base: str  # the id without its WITH part
    family: Family
    detail: str = ""  # why it is unknown


_Tree: TypeAlias = "_Leaf | tuple[str, list[_Tree]]"  # ("AND" | "OR", parts) or one license


@dataclass(frozen=True)
class _Outcome:
    """A subtree's result for one component."""

    refusals: tuple[Refusal, ...] = ()
    obligations: tuple[Obligation, ...] = ()
    warnings: tuple[str, ...] = ()
    excepted: tuple[tuple[Excepted, LicenseException], ...] = ()
    burden: int = 0

    def rank(self) -> tuple[bool, bool, int]:
        """OR alternatives: passing before refused, without an exception before with one, then the lightest."""
        return (bool(self.refusals), bool(self.excepted), self.burden)


@functools.cache
def _licensing() -> Any:
    return get_spdx_licensing()


def _name_key(text: str) -> str:
    return _CLASSIFIER_PREFIX.sub("", " ".join(text.split()).casefold())


def family_of(license_id: str) -> Family:
    """The family of one SPDX id (without a ``WITH`` part); :data:`UNCLASSIFIED` when no family matches."""
    key = license_id.casefold()
    if key in NOT_DECLARED:
        return UNKNOWN_FAMILY
    for family in FAMILIES:
        if any(fnmatch.fnmatchcase(key, pattern.casefold()) for pattern in family.patterns):
            return family
    return UNCLASSIFIED


def _symbol_leaf(symbol: Any) -> _Leaf:
    if isinstance(symbol, LicenseWithExceptionSymbol):
        base = _symbol_leaf(symbol.license_symbol)
        return _Leaf(f"{base.license} WITH {symbol.exception_symbol.key}", base.base, base.family)
    key = NAMES.get(_name_key(symbol.key), symbol.key)
    return _Leaf(key, key, family_of(key))


def _unknown(declared: str | None, detail: str) -> _Leaf:
    shown = declared.strip() if declared and declared.strip() else UNKNOWN
    return _Leaf(shown, shown, UNKNOWN_FAMILY, detail)


def _parse(declared: str | None) -> _Tree:
    """The declared license as a tree: ``("AND" | "OR", [subtrees])`` or a :class:`_Leaf`.

    ``None``, blank, a not-declared marker or text that is no license expression is one unknown leaf.
    """
    if declared is None or not declared.strip():
        return _unknown(declared, "no license declared")
    text = _spdx_names(declared.strip())
    if _name_key(text) in NOT_DECLARED:
        return _unknown(declared, f"declared as {declared.strip()!r}, no license the gate can judge")
    try:
        expression = _licensing().parse(text)
    except ExpressionError as exc:
        return _unknown(declared, f"{declared.strip()!r} is not a license expression the gate can read ({exc})")
    return _tree(expression)


def _spdx_names(declared: str) -> str:
    """``declared`` with every name :data:`NAMES` knows replaced by its SPDX id: the whole text, or else each part
    of a flat ``A AND B`` / ``A OR B`` of names (how the inference probe joins several classifiers)."""
    whole = NAMES.get(_name_key(declared))
    if whole is not None or "(" in declared:
        return whole or declared
    parts = _OPERATOR.split(declared)  # names at even indexes, operators between them
    return " ".join(part if i % 2 else NAMES.get(_name_key(part), part) for i, part in enumerate(parts))


def _tree(expression: Any) -> _Tree:
    if isinstance(expression, LicenseSymbol | LicenseWithExceptionSymbol):
        return _symbol_leaf(expression)
    operator = expression.operator.strip().upper()
    return (operator, [_tree(arg) for arg in expression.args])


def _canonical(pattern: str) -> str:
    """An exception's license as the leaves show it (``AGPL-3.0`` -> ``AGPL-3.0-only``); globs stay as written."""
    if any(char in pattern for char in "*?["):
        return pattern
    tree = _parse(pattern)
    return tree.license if isinstance(tree, _Leaf) and tree.family is not UNKNOWN_FAMILY else pattern


def _covers(exception: LicenseException, component: Component, leaf: _Leaf) -> bool:
    if exception.component is not None:
        wanted = exception.component.casefold().split()
        if component.name.casefold().split()[: len(wanted)] != wanted:
            return False
    names = {leaf.license, leaf.base} | ({UNKNOWN} if leaf.family is UNKNOWN_FAMILY else set())
    pattern = _canonical(exception.license).casefold()
    return any(fnmatch.fnmatchcase(name.casefold(), pattern) for name in names)


def _judge_leaf(
    leaf: _Leaf, component: Component, policy: LicensePolicy, exceptions: Sequence[LicenseException]
) -> _Outcome:
    where = (component.name, component.kind)
    for exception in exceptions:
        if _covers(exception, component, leaf):
            covered = Excepted(*where, license=leaf.license, reference=exception.reference, note=exception.note)
            return _Outcome(excepted=((covered, exception),))
    family = leaf.family
    declared = f" (declared {component.license!r})" if component.license and component.license != leaf.license else ""
    obligations = (Obligation(*where, leaf.license, family.name, family.obligation),) if family.obligation else ()
    blocked = family in (UNKNOWN_FAMILY, UNCLASSIFIED)
    why = leaf.detail or family.refusal
    if policy == "commercial" and family.refusal:
        closed = "; fail closed" if blocked else ""
        refusal = Refusal(*where, leaf.license, family.name, f"{why}{declared}{closed}; {FIX}")
        return _Outcome(refusals=(refusal,), obligations=obligations, burden=family.burden)
    warnings: tuple[str, ...] = ()
    if blocked:
        warnings = (f"{component.name} ({component.kind}): {leaf.license} [{family.name}]: {why}{declared}",)
    elif family.restricts_use:
        warnings = (f"{component.name} ({component.kind}): {leaf.license} is not an open-source license: {why}",)
    return _Outcome(obligations=obligations, warnings=warnings, burden=family.burden)


def _merge(outcomes: Iterable[_Outcome], burden: int) -> _Outcome:
    parts = list(outcomes)
    return _Outcome(
        refusals=tuple(dict.fromkeys(r for part in parts for r in part.refusals)),
        obligations=tuple(dict.fromkeys(o for part in parts for o in part.obligations)),
        warnings=tuple(dict.fromkeys(w for part in parts for w in part.warnings)),
        excepted=tuple(dict.fromkeys(e for part in parts for e in part.excepted)),
        burden=burden,
    )


def _judge(
    tree: _Tree, component: Component, policy: LicensePolicy, exceptions: Sequence[LicenseException]
) -> _Outcome:
    if isinstance(tree, _Leaf):
        return _judge_leaf(tree, component, policy, exceptions)
    operator, args = tree
    parts = [_judge(arg, component, policy, exceptions) for arg in args]
    if operator == "AND":
        return _merge(parts, max(part.burden for part in parts))
    chosen = min(parts, key=_Outcome.rank)  # OR: the first of the best, in declared order
    if not chosen.refusals:
        return chosen
    # every alternative refused: each of them is a way out, so all are named
    return _merge([chosen, *(_Outcome(refusals=part.refusals) for part in parts)], chosen.burden)


def check_licenses(record: LicenseRecord, params: LicenseParams) -> LicenseVerdict:
    """Decide whether a version with this license record may be promoted under ``params`` (``gate.license``).

    Args:
        record: every component of the version (model code, weights, data sources, runtime, packages).
        params: the policy, the exceptions and (not read here) the data sources' licenses.

    Returns:
        The verdict: ``allowed`` is false when anything was refused (only under ``commercial``); the obligations of
        every component's chosen licenses; warnings; what each exception covered, and the exceptions that covered
        nothing. An empty record is refused under ``commercial`` (nothing shows what ships) and warned about else.
    """
    outcome = _merge((_judge(_parse(c.license), c, params.policy, params.exceptions) for c in record.components), 0)
    refusals, warnings = outcome.refusals, outcome.warnings
    if not record.components:
        empty = "the license record lists no component: what ships is unknown"
        if params.policy == "commercial":
            refusals = (Refusal("<record>", "record", UNKNOWN, UNKNOWN_FAMILY.name, f"{empty}; fail closed"),)
        else:
            warnings = (empty,)
    used = {exception for _, exception in outcome.excepted}
    return LicenseVerdict(
        policy=params.policy,
        allowed=not refusals,
        refusals=refusals,
        obligations=outcome.obligations,
        warnings=warnings,
        excepted=tuple(excepted for excepted, _ in outcome.excepted),
        unused_exceptions=tuple(e for e in params.exceptions if e not in used),
    )


def verdict_tags(verdict: LicenseVerdict) -> dict[str, str]:
    """The verdict as MLflow version tags (``license.policy``, ``license.verdict``: ``allowed``/``refused``, and
    ``license.refused`` / ``license.obligations`` / ``license.excepted`` / ``license.warnings`` when there are
    any), each at most 4000 characters."""
    tags = {"license.policy": verdict.policy, "license.verdict": "allowed" if verdict.allowed else "refused"}
    parts = {
        "license.refused": verdict.reasons(),
        "license.obligations": list(dict.fromkeys(f"{o.family}: {o.what}" for o in verdict.obligations)),
        "license.excepted": [f"{e.component}: {e.license} under {e.reference}" for e in verdict.excepted],
        "license.warnings": list(verdict.warnings),
    }
    tags |= {key: " | ".join(lines)[:4000] for key, lines in parts.items() if lines}
    return tags


def refusals_in_tags(tags: Mapping[str, str]) -> list[str]:
    """The refusals :func:`verdict_tags` wrote (``license gate (<policy>): <line>`` each); empty when allowed or
    when the version has no verdict."""
    if tags.get("license.verdict") != "refused":
        return []
    policy = tags.get("license.policy", "?")
    return [f"license gate ({policy}): {line}" for line in tags.get("license.refused", "").split(" | ") if line]
