"""Cost of the evaluation monitors: ``python -m bench.monitor_overhead [--quick]``.

Times evaluation passes (``torch.no_grad``, eval mode) of two networks over the same batches
with nothing attached, with the activity monitor only (firing rates, dead/saturated
neurons), with the full evaluation probe (activity + SOP/MAC counting, the trainer's
default ``analysis.monitors: true``) and with membrane statistics as well. The variants
run interleaved, round after round, and the median per round is reported, so load from
other processes hits all of them alike. Single-threaded (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from spikegrad import models
from spikegrad.analysis import EvalProbe
from spikegrad.config import AnalysisConfig
from spikegrad.monitors import ActivityMonitor
from spikegrad.neurons import SpikingNeuron


class PreviousRateMonitor(contextlib.AbstractContextManager):
    """The firing-rate monitor spikegrad had before (a float sum per call), for reference."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.spikes, self.handles = model, 0.0, []

    def __enter__(self):
        def hook(module, inputs, output):
            self.spikes += float(output.detach().sum())

        self.handles = [m.register_forward_hook(hook) for m in self.model.modules()
                        if isinstance(m, SpikingNeuron)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


VARIANTS = {
    "none": lambda model: contextlib.nullcontext(),
    "previous rate monitor": PreviousRateMonitor,
    "activity monitor": lambda model: ActivityMonitor(model),
    "activity + SOPs (default)": lambda model: EvalProbe(model, AnalysisConfig()),
    "+ membrane statistics": lambda model: EvalProbe(model, AnalysisConfig(membrane=True)),
}


def evaluate(model: torch.nn.Module, batches: list[torch.Tensor], make) -> float:
    start = time.perf_counter()
    with torch.no_grad(), make(model) as probe:
        for x in batches:
            model(x)
            if isinstance(probe, EvalProbe):
                probe.add_samples(x.shape[0])
        if isinstance(probe, (EvalProbe, ActivityMonitor)):
            probe.summary()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and batches (3 and 2)")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, --quick 3)")
    parser.add_argument("--batches", type=int, help="batches per evaluation (default 4, --quick 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rounds, n_batches = (3, 2) if args.quick else (7, 4)
    rounds, n_batches = args.rounds or rounds, args.batches or n_batches
    cases = {
        "digits_cnn (T=4, 1x8x8, batch 256)": (
            models.create("digits_cnn", T=4), torch.rand(n_batches, 256, 1, 8, 8)),
        "resnet20 (T=4, 3x32x32, width 0.5, batch 32)": (
            models.create("resnet20", T=4, width=0.5), torch.rand(n_batches, 32, 3, 32, 32)),
    }
    print(f"{'network':<46} {'variant':<28} {'median s':>9} {'overhead':>9}")
    for case, (model, data) in cases.items():
        model.eval()
        batches = list(data)
        evaluate(model, batches[:1], VARIANTS["none"])  # warm-up
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(rounds):
            for name, make in VARIANTS.items():
                times[name].append(evaluate(model, batches, make))
        base = statistics.median(times["none"])
        for name in VARIANTS:
            median = statistics.median(times[name])
            print(f"{case:<46} {name:<28} {median:9.3f} {100 * (median / base - 1):8.1f}%")


if __name__ == "__main__":
    main()
