"""Write this folder's fixture: a run stopped mid-epoch, in the checkpoint format of the
spikegrad that made it, and the metrics of the same run uninterrupted.

    PYTHONPATH=<that spikegrad's src> python tests/data/checkpoint_v1/make_fixture.py

The run is the digits recipe at width 0.25, T = 2, two epochs of 12 batches, with the
adaptive Dspike temperature, shortcut branches and gradient diagnostics (every component
that checkpoints state), ``last.pt`` written every 5 iterations; it stops after iteration 17,
so ``last.pt`` holds iteration 15: epoch 2, batch 3.
"""

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

from spikegrad.config import load_config
from spikegrad.data import build_augmentation
from spikegrad.run import build_components, build_parts, train
from spikegrad.trainer import Trainer

HERE = Path(__file__).resolve().parent
PACKAGED = Path(sys.modules["spikegrad"].__file__).parent / "configs" / "digits.yaml"
OVERRIDES = {
    "model.width": 0.25, "model.T": 2, "data.batch_size": 128, "train.epochs": 2,
    "train.checkpoint_every": 5, "train.threads": 1, "train.device": "cpu", "train.progress": False,
    "dspike.adaptive": True, "dspike.batch_size": 32, "dspike.num_weights": 16,
    "shortcut.enabled": True, "diagnostics.gradient_interval": 3,
}


class Stop(Exception):
    pass


def main() -> None:
    config = load_config(PACKAGED).with_overrides(OVERRIDES)
    with tempfile.TemporaryDirectory() as tmp:
        full, stopped = Path(tmp) / "full", Path(tmp) / "stopped"
        train(config, full, verbose=False)
        parts = build_parts(config)
        trainer = Trainer(parts.model, parts.train_set, parts.test_set, config,
                          components=build_components(config, parts.model), out_dir=stopped,
                          augment=build_augmentation(config.data.augment, parts.info),
                          model_args=parts.model_args, verbose=False)
        after_step = trainer._after_step

        def stop_after_17() -> None:
            after_step()
            if trainer.iteration == 17:
                raise Stop

        trainer._after_step = stop_after_17
        with contextlib.suppress(Stop):
            trainer.fit()
        for name in ("config.yaml", "last.pt", "metrics.jsonl", "gradients.jsonl"):
            shutil.copy(stopped / name, HERE / name)
        shutil.copy(full / "metrics.jsonl", HERE / "uninterrupted_metrics.jsonl")
        shutil.copy(full / "gradients.jsonl", HERE / "uninterrupted_gradients.jsonl")


if __name__ == "__main__":
    main()
