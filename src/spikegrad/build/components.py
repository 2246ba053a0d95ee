"""Every method section of a config -> its component; the LTL teacher it needs."""

from __future__ import annotations

from torch import nn

from spikegrad.checkpoint import load_model
from spikegrad.component import Component
from spikegrad.config import Config, DataConfig, LTLConfig, apply_overrides, from_dict, read_yaml
from spikegrad.errors import UserError
from spikegrad.methods.registry import components_from_config, method
from spikegrad.recipes import recipe_path

__all__ = ["build_components", "load_teacher", "teacher_config"]


#: the training-set cuts a teacher takes from its student unless its recipe or teacher_set sets them
INHERITED_SPLIT_KEYS = ("validation", "split_seed", "subset")


def teacher_config(ltl: LTLConfig, student_data: DataConfig | None = None) -> Config:
    """The config of the ANN teacher ``ltl.teacher_recipe`` (with ``ltl.teacher_set``).

    ``data.validation``, ``data.split_seed`` and ``data.subset`` the teacher recipe and
    ``ltl.teacher_set`` leave unset come from the student's ``student_data``, so a teacher
    trained for a student tuned on a validation split never sees that split's samples; a
    teacher left with no cut at all takes no seed for one either (``data.split_seed`` 0).
    """
    raw = read_yaml(recipe_path(ltl.teacher_recipe, what="ltl.teacher_recipe"))
    apply_overrides(raw, ltl.teacher_set)
    if student_data is not None:
        given = dict(raw["data"]) if isinstance(raw.get("data"), dict) else {}
        data = raw.get("data")
        if data is None:
            data = raw["data"] = {}
        if isinstance(data, dict):  # anything else is refused by from_dict below
            for key in INHERITED_SPLIT_KEYS:
                data.setdefault(key, getattr(student_data, key))
            if not data.get("subset") and not data.get("validation") and "split_seed" not in given:
                data["split_seed"] = 0  # the teacher has no cut for the student's seed to seed
    config = from_dict(Config, raw)
    if config.ltl.mode != "none" or config.model.kind != "ann":
        raise UserError(f"the teacher recipe {ltl.teacher_recipe!r} must train an ANN (model.kind: "
                        "ann, ltl.mode: none); add 'model.kind=ann' to ltl.teacher_set")
    return config


def load_teacher(ltl: LTLConfig) -> nn.Module:
    """The trained ANN teacher stored in ``ltl.teacher_checkpoint``."""
    if ltl.teacher_checkpoint is None:
        if ltl.teacher_recipe is not None:
            raise UserError(
                f"ltl.teacher_recipe {ltl.teacher_recipe!r} is trained before the student: train "
                "with spikegrad.train(config, out_dir) (or `spikegrad train`), which does it, or "
                "set ltl.teacher_checkpoint to a trained ANN twin")
        raise UserError("LTL needs a teacher: set ltl.teacher_checkpoint (a trained ANN twin) or "
                        "ltl.teacher_recipe (a recipe with model.kind: ann, trained first)")
    model, _ = load_model(ltl.teacher_checkpoint)
    return model


def build_components(config: Config, model: nn.Module | None = None, *,
                     teacher: nn.Module | None = None) -> list[Component]:
    """The components of every method ``config`` turns on for ``model`` (the method registry's
    order: ``ltl``, ``dspike``, ``diagnostics``, ``shortcut``).

    ``teacher``: the LTL teacher if already at hand; otherwise it is loaded from
    ``ltl.teacher_checkpoint`` (a teacher recipe must be trained first: :func:`spikegrad.train`).
    """
    if teacher is None and method("ltl").enabled(config, model):
        teacher = load_teacher(config.ltl)
    return components_from_config(config, model, teacher=teacher)
