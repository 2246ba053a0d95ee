"""Your own spiking network with the adaptive Dspike temperature and shortcut branches.

The model is a plain ``nn.Sequential`` of spikegrad layers, passed to the trainer as a
function (a *factory*): the trainer seeds every generator with ``train.seed`` before calling
it, so the initial weights, and with them the whole run, are reproducible. The config's
method sections do the rest: ``dspike.adaptive`` searches the temperature every epoch, and
``shortcut`` adds branches from the named activations (``"2"``, the first spiking layer)
to the output while training. Two runs with the same seed end with the same weights:

    python examples/custom_model_methods.py
"""

import torch
from torch import nn

from spikegrad import Config, Trainer, data, layers, neurons, surrogates


def spiking_cnn(T: int = 4) -> nn.Module:
    """``[B, 1, 8, 8]`` digits -> ``[T, B, 10]`` logits; the neurons are modules "2" and "4"."""
    def lif() -> neurons.LIF:
        return neurons.LIF(leak=0.25, threshold=0.5, surrogate=surrogates.Dspike(temperature=3.0))

    return nn.Sequential(
        layers.DirectEncoder(T),  # [B, 1, 8, 8] -> [T, B, 1, 8, 8]
        layers.TimeDistributed(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16))),
        lif(),
        layers.TimeDistributed(nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
                                             nn.AvgPool2d(2))),
        lif(),
        layers.TimeDistributed(nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 10))),  # [T, B, 10]
    )


def main(out_dir: str = "runs/custom_model_methods", epochs: int = 3) -> None:
    train_set, test_set, _ = data.build_datasets("digits")
    config = Config().with_overrides({
        "name": "custom-cnn", "train.epochs": epochs, "train.seed": 0, "data.batch_size": 64,
        "optim.name": "adamw", "optim.lr": 3e-3, "optim.weight_decay": 0.0,
        "dspike.adaptive": True, "dspike.batch_size": 32, "dspike.num_weights": 16,
        "shortcut.enabled": True, "shortcut.attach": ["2"],
    })
    weights = []
    for run in ("a", "b"):
        trainer = Trainer(spiking_cnn, train_set, test_set, config, out_dir=f"{out_dir}/{run}",
                          overwrite=True)  # each run of the script starts over
        summary = trainer.fit()
        weights.append(trainer.model.state_dict())
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    print(f"{summary['method']}: test accuracy {100 * summary['final_test_acc']:.1f}%, "
          f"T = {summary['T']}; the two seeded runs are {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
