"""Model families: the only importers of a model library (Ultralytics, rfdetr), behind one ``ModelFamily`` protocol.

:data:`FAMILIES` is the table ``train.family`` chooses from; :func:`family` looks one up. A second family is
one module here (a class meeting :class:`~tasks.models.base.ModelFamily`), its line in :data:`FAMILIES`, its
``train.<family>`` settings in ``tasks/config/sections.py`` and the ``train.family`` value.
"""

from __future__ import annotations

from tasks.config import ConfigError, Params
from tasks.models.base import ModelFamily, trust_params
from tasks.models.rfdetr import RfdetrFamily
from tasks.models.yolo import YoloFamily
from tasks.runtimes.detectors import register_loader

FAMILIES: dict[str, ModelFamily] = {"yolo": YoloFamily(), "rfdetr": RfdetrFamily()}


def family(params: Params) -> ModelFamily:
    """The family ``train.family`` names, with its checkpoint loaders registered for ``load_detector``.

    Also makes ``params`` the one whose records say which checkpoints those loaders may open in this context
    (:func:`tasks.models.base.trust_params`; :mod:`tasks.contracts.checkpoints`).

    Raises:
        ConfigError: no family of that name.
    """
    try:
        chosen = FAMILIES[params.train.family]
    except KeyError:
        raise ConfigError(f"train.family {params.train.family!r}: no such model family ({sorted(FAMILIES)})") from None
    for loader in chosen.loaders:
        register_loader(loader)
    trust_params(params)
    return chosen
