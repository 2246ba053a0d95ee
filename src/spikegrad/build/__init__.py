"""The one place where a config or a checkpoint becomes objects.

- :func:`datasets_from_config`: ``config.data`` -> ``(train_set, eval_set, info)``, the
  training set cut by ``data.subset`` / ``data.validation`` (:func:`eval_split`: whether the
  evaluation set is the test set or the validation split);
- :func:`build_model` / :func:`model_arguments`: ``config.model`` and the dataset -> the
  registered network (seeded with ``train.seed``) and the arguments that rebuild it;
- :func:`build_parts`: both at once (:class:`RunParts`);
- :func:`build_components`: every method section of the config -> its component (through
  :mod:`spikegrad.methods.registry`), the LTL teacher loaded from ``ltl.teacher_checkpoint``;
- :func:`teacher_config`: the config of an LTL teacher trained first (``ltl.teacher_recipe``),
  with the student's training-set cuts;
- :func:`from_checkpoint`: a checkpoint -> its model, payload and config.

Training itself (and training a teacher first) is :func:`spikegrad.run.train`.
"""

from spikegrad.build.components import build_components, load_teacher, teacher_config
from spikegrad.build.model import build_model, model_arguments, model_spec
from spikegrad.build.parts import Checkpointed, RunParts, build_parts, from_checkpoint
from spikegrad.data.from_config import datasets_from_config, eval_split

__all__ = [
    "Checkpointed", "RunParts", "build_components", "build_model", "build_parts",
    "datasets_from_config", "eval_split", "from_checkpoint", "load_teacher", "model_arguments",
    "model_spec", "teacher_config",
]
