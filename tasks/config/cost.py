"""Config of a cycle's cost figures (``cycle.cost``): the prices the cycle report multiplies its measurements by.

Read by :mod:`tasks.decisions.cost` (the maths) through the cycle stage, which writes
``reports/cycles/<cycle>/cost.json``. It sits under ``cycle`` because every top-level section is a stage and the cost
is part of the cycle's report.

Every price is the user's own and has no default: ``None`` (``null``) means "no price set", and the report then
shows the measured quantity (hours, bytes, images) without a money figure. A default that looked like a quote
would be a number nobody measured.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from tasks.config.base import NonNegativeFloat, Section

Currency = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8)]


class CostParams(Section):
    """``cycle.cost``: prices per unit, each ``None`` (not shown) or >= 0 in ``currency``.

    Attributes:
        currency: the label money figures carry (``USD``, ``EUR``, ...); it converts nothing.
        label_price_per_image: what one labeled image costs (annotation vendor or staff time).
        instance_price_per_hour: one hour of the machine the loop runs on and the selected artifact is timed on
            (the export stage's throughput is measured there): prices the cycle's compute hours and 1 k inferences.
        storage_price_per_gb_month: one GB (10^9 bytes) stored for a month: prices the storage the cycle added.
    """

    currency: Currency = "USD"
    label_price_per_image: NonNegativeFloat | None = None
    instance_price_per_hour: NonNegativeFloat | None = None
    storage_price_per_gb_month: NonNegativeFloat | None = None
