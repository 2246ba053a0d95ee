"""Time of one adaptive-Dspike temperature search, side by side for several settings and sources.

    python -m bench.fdg_search                                  # this checkout, max_stacked 512
    python -m bench.fdg_search --max-stacked 128 512 --baseline /tmp/before/src

The model is the ``digits`` recipe's spiking CNN (width 0.25, T = 4, batch norm) on random
28×28 one-channel images (the size of MNIST and Animal-MNIST), with the ``dspike`` section's
defaults: 4 probe batches of 64, 32 probed weights of the first convolution, train-mode batch
norm. One step is one search (per probe batch: the FDG of the probed weights and one BPTT
forward pass with a backward pass per candidate), as :class:`spikegrad.AdaptiveTemperature`
runs it at the start of an epoch.

Contenders are ``SOURCE:MAX_STACKED``: ``current`` is the ``spikegrad`` this module imports,
``baseline`` the one under ``--baseline`` (the ``src`` folder of another checkout, e.g.
``git archive COMMIT src | tar -x -C /tmp/before``), each with every ``--max-stacked``. Each
runs in its own process (bench/_harness.py: interleaved rounds, medians). Every contender
searches the same model, batches and weights; the report gives each one's largest difference
in mean similarity from the first contender's (only float summation order may differ) and
how far a search raised the process's resident memory above what it held before (its peak).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench import _harness


def setup_worker(name: str, args):
    source, max_stacked = name.rsplit(":", 1)
    if source == "baseline":
        sys.path.insert(0, args.baseline)  # before the first import of spikegrad
    import spikegrad
    from spikegrad import Trainer, build_model, load_config
    from spikegrad.data import DatasetInfo
    from spikegrad.recipes import recipe_path

    torch.set_num_threads(args.threads)
    config = load_config(recipe_path(args.recipe), [
        f"model.width={args.width}", f"model.T={args.T}", "train.device=cpu", "train.progress=false",
        "dspike.adaptive=true", "diagnostics.gradient_interval=0", f"dspike.max_stacked={max_stacked}",
        *args.set,
    ])
    shape = (args.channels, args.size, args.size)
    generator = torch.Generator().manual_seed(0)
    n = max(config.data.batch_size, config.dspike.batch_size)
    data = torch.utils.data.TensorDataset(torch.rand(n, *shape, generator=generator),
                                          torch.randint(0, 10, (n,), generator=generator))
    torch.manual_seed(0)
    model, _ = build_model(config, DatasetInfo(num_classes=10, sample_shape=shape))
    trainer = Trainer(model, data, data, config, verbose=False)
    (search,) = trainer.components
    b0 = dict(search.temperatures)
    last: dict = {"cpu_s": []}

    def step() -> dict:
        for group in search.groups:  # every search starts from the same temperature
            search.temperatures[group.name] = b0[group.name]
            group.set(b0[group.name])
        before = _harness.rss_bytes()
        _harness.reset_peak_rss()
        cpu = time.process_time()
        similarities = search.search(trainer.context, epoch=1)
        cpu = time.process_time() - cpu
        last["similarities"] = next(iter(similarities.values()))
        peak = _harness.rss_bytes("VmHWM")
        grown = (peak - before) / 2**20 if peak and before else None
        last["cpu_s"].append(cpu)
        return {"similarities": last["similarities"], "peak_rss_mib": grown, "cpu_s": list(last["cpu_s"])}

    step()  # warm-up
    last["cpu_s"].clear()
    d = config.dspike
    info = {"spikegrad": spikegrad.__file__, "similarities": last["similarities"],
            "settings": f"{d.probe_batches} batches × {d.num_weights} weights, batch {d.batch_size}, "
                        f"bn_mode={d.bn_mode}, T={config.model.T}, width {config.model.width}, "
                        f"input {list(shape)}"}
    return step, info


def report(results: dict[str, dict]) -> str:
    first = next(iter(results))
    reference = results[first]["info"]["similarities"]
    base = statistics.median(results[first]["runs"][-1]["cpu_s"])  # every repetition's
    rows = []
    for name, r in results.items():
        seconds = _harness.median_ms(r["times"]) / 1e3
        cpu = statistics.median(r["runs"][-1]["cpu_s"])
        sims = r["info"]["similarities"]
        diff = max(abs(sims[k] - reference[k]) for k in reference)
        peaks = [run["peak_rss_mib"] for run in r["runs"] if run.get("peak_rss_mib")]
        rows.append([name, f"{seconds:.2f}", f"{cpu:.2f}", f"{base / cpu:.2f}", f"{diff:.1e}",
                     f"{max(peaks):.0f}" if peaks else "", r["info"]["spikegrad"]])
    return "\n".join([
        f"\n## one search: {results[first]['info']['settings']}",
        _harness.table(rows, ["contender", "median s", "median CPU s", f"CPU speed-up vs {first}",
                              "max |Δ similarity|", "peak RSS growth MiB", "spikegrad"]),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one Dspike temperature search, side by side")
    parser.add_argument("--recipe", default="digits")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--size", type=int, default=28, help="image side")
    parser.add_argument("--channels", type=int, default=1, help="image channels")
    parser.add_argument("--max-stacked", type=int, nargs="+", default=[512])
    parser.add_argument("--baseline", help="src folder of another spikegrad checkout to time alongside")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set dspike.num_weights=8")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _harness.serve(lambda: setup_worker(args.worker, args))
        return
    sources = ["baseline", "current"] if args.baseline else ["current"]
    names = [f"{s}:{m}" for s in sources for m in args.max_stacked]
    worker_args = list(argv if argv is not None else sys.argv[1:])
    command = "python -m bench.fdg_search " + " ".join(worker_args)
    print(_harness.header("bench.fdg_search", command.strip()))
    results = _harness.interleave("bench.fdg_search", names, worker_args, args.rounds, args.reps,
                                  log=lambda s: print(s, flush=True))
    print(report(results), flush=True)
    print(f"\n# finished; {_harness.machine()}")


if __name__ == "__main__":
    main()
