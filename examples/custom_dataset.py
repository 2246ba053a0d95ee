"""Train a spiking network on your own data with the Python API, no config file.

A 1-D signal classification task (noisy sine vs. square waves, 64 samples each) with a
spiking 1-D CNN built from spikegrad's layers. Runs in well under a minute on a CPU:

    python examples/custom_dataset.py
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikegrad import Config, Trainer, layers, neurons, surrogates


def make_waves(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, 64)
    freq = 2 + 4 * torch.rand(n, 1, generator=g)
    phase = 6.3 * torch.rand(n, 1, generator=g)
    sine = torch.sin(2 * torch.pi * freq * t + phase)
    labels = torch.randint(0, 2, (n,), generator=g)
    waves = torch.where(labels[:, None] == 1, torch.sign(sine), sine)
    waves = waves + 0.3 * torch.randn(n, 64, generator=g)
    return TensorDataset(waves.unsqueeze(1), labels)  # samples [1, 64]


def spiking_1d_cnn(T: int = 4) -> nn.Module:
    def lif() -> neurons.LIF:
        return neurons.LIF(leak=0.5, threshold=1.0, surrogate=surrogates.Dspike(temperature=3.0))

    return nn.Sequential(
        layers.DirectEncoder(T),  # [B, 1, 64] -> [T, B, 1, 64]
        layers.TimeDistributed(nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16))),
        lif(),
        layers.TimeDistributed(nn.Sequential(nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32),
                                             nn.AvgPool1d(4))),
        lif(),
        layers.TimeDistributed(nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 2))),  # [T, B, 2]
    )


def main() -> None:
    config = Config().with_overrides({
        "train.epochs": 8, "optim.name": "adamw", "optim.lr": 3e-3, "optim.weight_decay": 0.01,
        "data.batch_size": 32,
    })
    trainer = Trainer(spiking_1d_cnn(), make_waves(800, seed=0), make_waves(200, seed=1), config,
                      out_dir="runs/custom_dataset", overwrite=True)  # each run of the script starts over
    summary = trainer.fit()
    print(f"test accuracy {100 * summary['final_test_acc']:.1f}% "
          f"(mean firing rate {summary['firing_rate']:.3f})")


if __name__ == "__main__":
    main()
