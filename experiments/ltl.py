"""Local tandem learning against BPTT: accuracy, time per epoch and peak training memory.

    python -m experiments.ltl compare [--dataset digits] [--T 8] [--epochs 5] [--width 1.0]
    python -m experiments.ltl memory  [--dataset cluttered_digits] [--T 4 8 16 32] [--steps 3]

``compare`` trains the ANN teacher (digits.yaml, ``model.kind=ann``), then from the same
recipe (``digits_ltl.yaml``: no batch norm, LIF λ = 0.905, θ = 0.6) offline LTL (random and
teacher init), online LTL, and BPTT from scratch without and with batch norm, all with the
same epochs and T. ``memory`` runs a few training steps of BPTT, offline and online LTL for
each T.

Every configuration runs in its own subprocess with one thread. Peak memory is the peak
resident set size (``VmHWM``) after the set-up (data, model, teacher, optimizer) minus the
resident size at that moment: the high-water mark is reset through ``/proc/self/clear_refs``
right after the set-up, so it counts what training itself allocates. In ``compare`` the
evaluation batch equals the training batch and runs without a graph, so training dominates
the peak. Linux only. Results go to ``--out`` (JSON) and stdout (markdown tables).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- memory probes


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def reset_peak() -> int:
    """Reset the peak RSS to the current RSS; returns the current RSS in KiB."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_since_reset_mib(base_kib: int) -> float:
    return (_status_kib("VmHWM") - base_kib) / 1024


# --------------------------------------------------------------------------- one configuration


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the run of ``spec`` and either fit it or time a few steps, measuring memory."""
    import torch

    from spikegrad import Trainer, build_parts, load_config
    from spikegrad.recipes import recipe_path

    torch.set_num_threads(1)
    config = load_config(recipe_path(spec["recipe"]), spec["overrides"])
    parts = build_parts(config)  # the teacher comes from ltl.teacher_checkpoint
    out = spec.get("out")
    trainer = Trainer(parts.model, parts.train_set, parts.test_set, config, out_dir=out,
                      model_args=parts.model_args, verbose=False, overwrite=True)  # a rerun starts over
    batches = []
    if spec["mode"] == "steps":  # (making a loader iterator draws from its generator)
        batches = [trainer.to_device(*b) for b in itertools.islice(trainer.train_loader, spec["steps"])]
    base = reset_peak()
    result: dict[str, Any] = {"label": spec["label"]}
    if spec["mode"] == "fit":
        summary = trainer.fit()
        seconds = [row["seconds"] for row in trainer.history]
        result.update(summary=summary, epoch_seconds=seconds,
                      test_acc=[row["test_acc"] for row in trainer.history])
    else:
        trainer.model.train()
        tic = time.perf_counter()
        for inputs, targets in batches:
            trainer.train_step(inputs, targets)
        result["step_seconds"] = (time.perf_counter() - tic) / len(batches)
    result["peak_mib"] = peak_since_reset_mib(base)
    return result


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh process; a fit whose folder already holds its result is reused."""
    record = Path(spec["out"]) / "bench.json" if spec.get("out") else None
    if record is not None and record.is_file():
        stored = json.loads(record.read_text())
        if stored["spec"] == spec:
            return stored["result"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "experiments.ltl", "_worker", json.dumps(spec)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['label']} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if record is not None:
        from spikegrad.durable import atomic_write

        atomic_write(record, json.dumps({"spec": spec, "result": result}, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- experiments


def data_overrides(dataset: str) -> list[str]:
    return [f"data.name={dataset}"]


#: the digits_ltl student trained by BPTT: LTL off, and with it every setting of its teacher
BPTT = ["ltl.mode=none", "ltl.teacher_recipe=null", "ltl.teacher_set=[]", "ltl.teacher_checkpoint=null"]


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = Path(args.out)
    common = [*data_overrides(args.dataset), f"model.width={args.width}", "train.progress=false",
              f"train.seed={args.seed}"]
    teacher_dir = out / "teacher"
    runs = [("ann teacher", "digits", ["model.kind=ann", f"data.eval_batch_size={args.batch}",
                                        f"data.batch_size={args.batch}"], teacher_dir)]
    student = [f"model.T={args.T}", f"train.epochs={args.epochs}", f"data.batch_size={args.batch}",
               f"data.eval_batch_size={args.batch}",
               f"ltl.teacher_checkpoint={teacher_dir / 'last.pt'}"]
    runs += [
        ("ltl-offline", "digits_ltl", student, out / "ltl_offline"),
        ("ltl-offline, teacher init", "digits_ltl", [*student, "ltl.student_init=teacher"],
         out / "ltl_offline_init"),
        ("ltl-online", "digits_ltl", [*student, "ltl.mode=online"], out / "ltl_online"),
        ("ltl-online, teacher init", "digits_ltl",
         [*student, "ltl.mode=online", "ltl.student_init=teacher"], out / "ltl_online_init"),
        ("ltl-online, T_warm = T/4", "digits_ltl",
         [*student, "ltl.mode=online", f"ltl.T_warm={args.T // 4}"], out / "ltl_online_twarm"),
        ("bptt, no BN (same student)", "digits_ltl", [*student, *BPTT], out / "bptt"),
        ("bptt, BN", "digits_ltl", [*student, *BPTT, "model.options.batch_norm=true"],
         out / "bptt_bn"),
    ]
    results = []
    for label, recipe, overrides, folder in runs:
        spec = {"label": label, "recipe": recipe, "overrides": [*common, *overrides], "mode": "fit",
                "out": str(folder)}
        result = run_worker(spec)
        result["command"] = ("spikegrad train configs/" + recipe + ".yaml "
                             + " ".join(f"--set {o}" for o in spec["overrides"]) + f" --out {folder}")
        results.append(result)
        print(f"  {label}: {100 * result['summary']['final_test_acc']:.2f}%", file=sys.stderr)
    print(f"\n{args.dataset}, T = {args.T}, {args.epochs} epochs, width {args.width}, batch "
          f"{args.batch}, one thread\n")
    print("| run | test acc (final) | per epoch | epochs | s / epoch | peak training memory |")
    print("|---|---|---|---|---|---|")
    for r in results:
        s = r["summary"]
        accs = " ".join(f"{100 * a:.1f}" for a in r["test_acc"])
        print(f"| {r['label']} | {100 * s['final_test_acc']:.2f}% | {accs} | {s['epochs']} | "
              f"{sum(r['epoch_seconds']) / len(r['epoch_seconds']):.1f} | {r['peak_mib']:.0f} MiB |")
    return results


#: what ``memory`` compares: overrides of the digits_ltl recipe
MEMORY_METHODS = {"bptt": BPTT, "ltl-offline": [], "ltl-online": ["ltl.mode=online"]}


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    from spikegrad import build_model, datasets_from_config, load_config
    from spikegrad.checkpoint import save_checkpoint
    from spikegrad.recipes import recipe_path

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # An untrained ANN twin is enough to measure memory; its quality does not matter.
        config = load_config(recipe_path("digits"),
                             [*data_overrides(args.dataset), "model.kind=ann",
                              f"model.width={args.width}"])
        model, model_args = build_model(config, datasets_from_config(config.data)[2])
        teacher = Path(tmp) / "teacher.pt"
        save_checkpoint(teacher, model, model_args)
        for T in args.T:
            for label, extra in ((m, MEMORY_METHODS[m]) for m in args.methods):
                overrides = [*data_overrides(args.dataset), f"model.width={args.width}",
                             f"model.T={T}", f"data.batch_size={args.batch}",
                             f"ltl.teacher_checkpoint={teacher}", *extra]
                result = run_worker({"label": label, "recipe": "digits_ltl", "overrides": overrides,
                                     "mode": "steps", "steps": args.steps})
                result["T"] = T
                results.append(result)
                print(f"  T={T} {label}: {result['peak_mib']:.1f} MiB, "
                      f"{result['step_seconds']:.3f} s/step", file=sys.stderr)
    labels = list(args.methods)
    print(f"\n{args.dataset}, digits_cnn width {args.width}, batch {args.batch}, "
          f"{args.steps} training steps, one thread\n")
    print("| T | " + " | ".join(f"{m} peak MiB" for m in labels) + " | "
          + " | ".join(f"{m} s/step" for m in labels) + " |")
    print("|---" * (1 + 2 * len(labels)) + "|")
    for T in args.T:
        row = {r["label"]: r for r in results if r["T"] == T}
        print(f"| {T} | " + " | ".join(f"{row[m]['peak_mib']:.0f}" for m in labels) + " | "
              + " | ".join(f"{row[m]['step_seconds']:.3f}" for m in labels) + " |")
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        print(json.dumps(worker(json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(prog="python -m experiments.ltl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="teacher, offline/online LTL and BPTT: accuracy, time, memory")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_ltl")
    p = sub.add_parser("memory", help="peak training memory against T")
    p.add_argument("--dataset", default="cluttered_digits")
    p.add_argument("--T", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(MEMORY_METHODS), choices=list(MEMORY_METHODS))
    p.add_argument("--out", default="runs/bench_ltl")
    args = parser.parse_args(argv)
    results = compare(args) if args.command == "compare" else memory(args)
    path = Path(args.out) / f"{args.command}_{args.dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    from spikegrad.durable import atomic_write

    atomic_write(path, json.dumps(results, indent=2) + "\n")
    print(f"\nwritten {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
