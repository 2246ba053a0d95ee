"""The ``spikegrad`` command line: train, eval, calibrate, demo, report, plot-gradients,
export, models, recipes, download, fdg.

User errors (a bad config key, a missing file, a wrong tensor layout) print one message
and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from spikegrad import __version__
from spikegrad.errors import UserError

EXIT_USER_ERROR = 2

# What eval and calibrate read of a checkpoint's stored config besides spikegrad.config.DATASET_KEYS
# (--set of any other key is refused: a setting that cannot apply is an error).
#: the readout window (spikegrad.methods.ltl.readout_start)
READOUT_KEYS = ("ltl.mode", "ltl.T_warm")
#: the per-layer analysis (spikegrad.analysis.EvalProbe)
ANALYSIS_KEYS = ("analysis.monitors", "analysis.membrane", "analysis.pj_per_ac", "analysis.pj_per_mac")


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spikegrad.resume import TrainingStopped
    from spikegrad.run import train
    from spikegrad.rundir import CLI_TERMS, finished_summary

    config, out, resume_from = _train_run(args)
    if resume_from is not None and not args.overwrite and Path(resume_from) == Path(out) / "last.pt":
        done = finished_summary(out, config)  # its last.pt says so
        if done is not None:
            if _rank() == 0:
                print(f"spikegrad: {out} has already finished ({done['epochs']} of "
                      f"{config.train.epochs} epochs): nothing to train. To train it longer: "
                      "--set train.epochs=N --allow-config-change. Its summary.json:")
                print(json.dumps(done, indent=2, ensure_ascii=False))
            return 0
    try:
        # a folder holding another run is refused (or, with --overwrite, emptied) under its lock
        summary = train(config, out, resume_from=resume_from, allow_config_change=args.allow_config_change,
                        overwrite=args.overwrite, terms=CLI_TERMS)
    except TrainingStopped as exc:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise
        raise TrainingStopped(exc.signum, exc.checkpoint, exc.position,
                              f"spikegrad train {out} --resume") from None
    if _rank() == 0:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _train_run(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """``spikegrad train``'s config, run folder and checkpoint to resume from (None: a new run).

    The config is the recipe with ``--set``; resuming, it is the run folder's own
    ``config.yaml`` (with ``--set`` on top) unless a recipe comes with ``--set``: a recipe
    alone that differs from the stored config is said and set aside.
    """
    from pathlib import Path

    from spikegrad.config import load_config
    from spikegrad.methods.registry import run_name
    from spikegrad.resume import config_differences, resume_checkpoint_path
    from spikegrad.rundir import CONFIG_FILE, default_run_folder

    device = [f"train.device={args.device}"] if args.device else []
    resume_from = Path(args.resume_from) if args.resume_from else None
    resuming = args.resume or resume_from is not None
    if args.allow_config_change and not resuming:
        raise UserError("--allow-config-change lets a resumed run take a changed config; without "
                        "--resume or --resume-from it has nothing to allow: leave it out, or resume")
    recipe, out = args.config, args.out
    if recipe is not None and Path(recipe).is_dir():  # spikegrad train runs/t6 --resume
        if not resuming:
            raise UserError(f"{recipe!r} is a folder: continue the run in it with `spikegrad train "
                            f"{recipe} --resume`, or give a recipe (a .yaml file)")
        if out is not None and Path(out) != Path(recipe):
            raise UserError(f"two run folders given ({recipe!r} and --out {out!r}); give one")
        recipe, out = None, recipe
    if recipe is None:  # resuming without a recipe: the run folder's own config
        folder = Path(out) if out else resume_from.parent if resume_from else None
        if not resuming or folder is None:
            raise UserError("give a recipe (spikegrad train configs/digits.yaml), or resume a run "
                            "with spikegrad train RUN_FOLDER --resume or --resume-from CHECKPOINT")
        config = load_config(folder / CONFIG_FILE, [*args.set, *device])
    else:
        config = load_config(recipe, [*args.set, *device])
    out = out or (str(resume_from.parent) if resume_from else str(default_run_folder(run_name(config))))
    stored = Path(out) / CONFIG_FILE
    if recipe is not None and resuming and not args.set and stored.is_file():
        own = load_config(stored, device)
        changed = [d.split(":")[0] for d in config_differences(own.to_dict(), config)]
        if changed and _rank() == 0:
            print(f"spikegrad: resuming {out} with its own {CONFIG_FILE} ({recipe} differs in "
                  f"{', '.join(changed)}; to change them give --set with the recipe and "
                  "--allow-config-change)", flush=True)
        config = own
    if args.resume and resume_from is None:
        resume_from = resume_checkpoint_path(out)
    return config, out, resume_from


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def _tell_torchrun(message: str) -> None:
    """Under torchrun, write ``message`` to the error file it names, so that its failure summary
    ("Root Cause") shows this message instead of ``error_file: <N/A>``."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import time

    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"message": message, "timestamp": int(time.time())}, handle)
    except OSError:
        pass  # the message is on stderr already


def _checkpoint(path: str, what: str = "checkpoint", quiet: bool = False) -> str:
    """A checkpoint path, or a run folder's ``best.pt`` (else ``last.pt``), said on stderr."""
    from pathlib import Path

    folder = Path(path)
    if not folder.is_dir():
        return path
    for name, why in (("best.pt", "its best test accuracy"), ("last.pt", "its last epoch")):
        if (folder / name).is_file():
            if not quiet:
                print(f"spikegrad: {what} {folder / name} ({why})", file=sys.stderr, flush=True)
            return str(folder / name)
    raise UserError(f"{path!r} is a folder without a checkpoint (best.pt or last.pt); give a "
                    "checkpoint file or a run folder")


def _output(path: str | None, flag: str = "--out") -> str | None:
    """``path`` if its folder exists (nothing is created), else a UserError."""
    from pathlib import Path

    if path is not None and not Path(path).parent.is_dir():
        raise UserError(f"{flag} {path!r}: the folder {str(Path(path).parent)!r} does not exist; "
                        "create it first or choose another path")
    return path


def _require_matplotlib(purpose: str) -> None:
    """Stop before any work when matplotlib is missing (a broken or --no-deps install)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"{purpose} draws with matplotlib, which is not installed here (a "
                        "dependency of spikegrad): pip install matplotlib")


def _cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from spikegrad.analysis import format_analysis
    from spikegrad.build import datasets_from_config, from_checkpoint
    from spikegrad.config import CHECKPOINT_MODEL, DATASET_KEYS, refuse_unread_overrides
    from spikegrad.data.from_config import eval_split
    from spikegrad.data.loader import collate_for
    from spikegrad.evaluation import evaluate_model
    from spikegrad.methods.ltl import readout_start
    from spikegrad.trainer import autocast_dtype, resolve_device, worker_args

    checkpoint = _checkpoint(args.checkpoint, "evaluating")
    _output(args.out)
    reads = [*DATASET_KEYS, "data.eval_batch_size", "data.num_workers", "train.device", "train.amp",
             *READOUT_KEYS, *(ANALYSIS_KEYS if args.analysis else ())]
    refuse_unread_overrides(args.set, reads, "spikegrad eval", {
        **CHECKPOINT_MODEL, "data.batch_size": "set data.eval_batch_size",
        "data.augment": "evaluation does not augment",
        "analysis": "give --analysis for the per-layer analysis" if not args.analysis else ""})
    run = from_checkpoint(checkpoint, args.set)
    model, config = run.model, run.config
    raster = _raster_layers(args, model)
    train_set, test_set, _ = datasets_from_config(config.data)
    dataset = test_set if args.split == "test" else train_set
    loader = DataLoader(dataset, batch_size=config.data.eval_batch_size, collate_fn=collate_for(dataset),
                        **worker_args(config.data.num_workers))
    device = resolve_device(args.device or config.train.device)
    result = evaluate_model(model.to(device), loader, device, autocast_dtype(device, config.train.amp),
                            analysis=config.analysis if args.analysis else None,
                            readout_start=readout_start(config, getattr(model, "T", 1)))
    split = eval_split(config.data) if args.split == "test" else args.split
    result.update({"checkpoint": checkpoint, "split": split,
                   "method": run.payload.get("method"), "epoch": run.payload.get("epoch")})
    if raster:
        from pathlib import Path

        from spikegrad.recording import record_and_plot

        out = args.out or Path(checkpoint).parent  # the run folder, where `report` finds it
        samples = 4 if args.samples is None else args.samples
        result["raster"] = [str(p) for p in record_and_plot(
            model, dataset, raster, samples, out, device, collate_for(dataset), checkpoint)]
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    rate = result["firing_rate"]
    loss = result["test_loss"]
    print(f"{checkpoint} ({result['method'] or 'model'}, epoch {result['epoch']}), {result['split']} split "
          f"of {len(dataset)} samples: accuracy {100 * result['test_acc']:.2f}%, loss "
          + ("-" if loss is None else f"{loss:.4f}")
          + ("" if rate is None else f", mean firing rate {rate:.4f}"))
    if "analysis" in result:
        print("\n" + format_analysis(result["analysis"]))
    elif args.analysis:
        print("no per-layer analysis: the stored config has analysis.monitors=false "
              "(--set analysis.monitors=true)")
    for path in result.get("raster", []):
        print(f"wrote {path}")
    return 0


def _raster_layers(args: argparse.Namespace, model) -> list[str]:
    """The layers of ``eval --raster`` (checked before evaluating); [] without it."""
    if not args.raster:
        if args.samples is not None or args.out is not None:
            raise UserError("--samples and --out go with --raster LAYER[,LAYER] (spike rasters)")
        return []
    _require_matplotlib("--raster")
    from spikegrad.recording import resolve_layers

    names = [n.strip() for n in args.raster.split(",") if n.strip()]
    resolve_layers(model, names)
    return names


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from spikegrad.build import datasets_from_config, from_checkpoint
    from spikegrad.calibration import calibrate
    from spikegrad.checkpoint import save_checkpoint
    from spikegrad.devices import DeviceModel
    from spikegrad.methods.ltl import readout_start

    _output(args.out)
    if args.out is not None and args.threshold_sigma > 0:
        raise UserError("--out cannot keep --threshold-sigma: threshold variation lives in the "
                        "neurons, not in the weights a checkpoint holds; leave out one of them")
    steps = _calibration_flags(args)
    checkpoint = _checkpoint(args.checkpoint, "calibrating", quiet=args.json)
    run = from_checkpoint(checkpoint)
    _calibration_overrides(args, steps, run.config)
    run.config = run.config.with_overrides(args.set)
    model, config = run.model, run.config
    teacher = from_checkpoint(_checkpoint(args.teacher, "teacher", quiet=args.json)).model \
        if args.teacher else None
    train_set, test_set, info = datasets_from_config(config.data)
    devices = DeviceModel(args.sigma, args.stuck_at_zero, args.stuck_at_max, args.bits,
                          args.threshold_sigma, args.seed)
    result = calibrate(model, devices, train_set, test_set, config, args.method, steps,
                       teacher=teacher, readout_start=readout_start(config, getattr(model, "T", 1)),
                       lr=args.lr, info=info)
    if args.out is not None:
        save_checkpoint(args.out, model, run.payload["model_args"], config=run.payload["config"],
                        method=f"{run.payload.get('method') or 'model'}+calibrated",
                        epoch=run.payload.get("epoch", 0), calibration=result)
        result["out"] = args.out
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(f"devices: {result['devices']}; {result['method']}, {result['steps']} steps")
    print(f"test accuracy: {100 * result['acc_fault_free']:.2f}% without faults, "
          f"{100 * result['acc_before']:.2f}% with them, {100 * result['acc_after']:.2f}% after "
          "calibration")
    if args.out is not None:
        print(f"calibrated model (faults applied) written to {args.out}")
    return 0


#: calibration steps without --steps
CALIBRATION_STEPS = 50


def _calibration_flags(args: argparse.Namespace) -> int:
    """``calibrate``'s step budget; flags that its ``--method`` and ``--steps`` leave unused
    are refused."""
    if args.teacher is not None and args.method != "ltl-online":
        raise UserError(f"--teacher is the ANN teacher of --method ltl-online; --method {args.method} "
                        "does not use it: leave it out, or give --method ltl-online")
    if args.method == "none" and args.steps is not None:
        raise UserError("--steps: --method none applies the faults without any update; leave --steps "
                        "out, or give --method ltl-online or bptt")
    steps = CALIBRATION_STEPS if args.steps is None else args.steps
    if args.lr is not None and (args.method == "none" or steps == 0):
        raise UserError(f"--lr: {'--method none' if args.method == 'none' else '--steps 0'} makes no "
                        "update, so no learning rate applies; leave --lr out")
    return steps


def _calibration_overrides(args: argparse.Namespace, steps: int, stored: Any) -> None:
    """Refuse the ``calibrate --set`` keys it does not read (``stored``: the checkpoint's config).

    Calibration rebuilds no model and sets its own epochs, schedule, weight decay and methods
    (:func:`spikegrad.calibration.calibration_config`); the rest depends on whether it trains."""
    from spikegrad.config import CHECKPOINT_MODEL, DATASET_KEYS, LOSS_KEYS, refuse_unread_overrides

    trains = args.method != "none" and steps > 0
    reads = [*DATASET_KEYS, "data.eval_batch_size", "train.device"]
    if stored.ltl.mode == "online" or (trains and args.method == "ltl-online"):
        reads.append("ltl.T_warm")  # the readout window; the online loss's first step
    if trains:
        reads += ["data.batch_size", "data.augment", "data.num_workers", "train.seed", "train.threads",
                  "train.amp", "train.grad_clip", "train.nonfinite", "optim.name", "optim.momentum",
                  "optim.nesterov", "optim.betas", "distributed",
                  *(["optim.lr"] if args.lr is None else [])]
        reads += LOSS_KEYS if args.method == "bptt" else [
            "train.label_smoothing", "ltl.percentile", "ltl.layer_weights", "ltl.readout_detach",
            "ltl.distill", "ltl.distill_temperature"]
    idle = f"{'--method none' if args.method == 'none' else '--steps 0'} makes no update"
    instead = {**CHECKPOINT_MODEL,
               **({k: idle for k in ("optim", "train", "ltl", "data", "distributed")} if not trains else {}),
               "optim.lr": "--lr sets it" if args.lr is not None else idle,
               "train.epochs": "--steps sets the number of calibration steps",
               "train.progress": "calibration shows no progress bar",
               "schedule": "calibration keeps one constant learning rate (--lr)",
               "optim.weight_decay": "calibration uses no weight decay",
               "dspike": "calibration keeps the trained surrogate (no temperature search)",
               "shortcut": "calibration trains without shortcut branches",
               "diagnostics": "calibration records no gradient diagnostics",
               "ltl.mode": "--method chooses how to calibrate",
               "ltl.student_init": "calibration starts from the trained student",
               "ltl.init_batches": "calibration starts from the trained student",
               "ltl.teacher_checkpoint": "give --teacher", "ltl.teacher_recipe": "give --teacher",
               "ltl.teacher_set": "give --teacher"}
    refuse_unread_overrides(args.set, reads, "spikegrad calibrate", instead)


def _cmd_demo(args: argparse.Namespace) -> int:
    from spikegrad.demo import DEMO_THREADS, run_demo
    from spikegrad.resume import TrainingStopped

    threads = DEMO_THREADS if args.threads is None else args.threads
    try:
        table = run_demo(args.out, quick=args.quick, resume=args.resume, overwrite=args.overwrite,
                         threads=threads)
    except TrainingStopped as exc:
        again = "spikegrad demo --resume" + ("" if args.out == "runs/demo" else f" --out {args.out}")
        raise TrainingStopped(exc.signum, exc.checkpoint, exc.position, again) from None
    print("\n" + table)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from spikegrad.report import write_report

    _output(args.out)
    _require_matplotlib("report")
    path = write_report(args.runs, args.out, args.title)
    print(f"report written to {path}")
    return 0


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise UserError(f"--input-shape {text!r} must be positive integers such as 3,32,32")
    return shape


def _checkpoint_input_shape(run: Any) -> tuple[int, ...]:
    """One input sample's shape for a checkpoint's model: its arguments, else its dataset."""
    kwargs = run.payload["model_args"]["kwargs"]
    if "input_size" in kwargs and "in_channels" in kwargs:
        return (kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"])
    from spikegrad.build import datasets_from_config

    try:
        return tuple(datasets_from_config(run.config.data)[2].sample_shape)
    except UserError as exc:
        raise UserError(f"cannot tell the input shape from the checkpoint ({exc}); pass "
                        "--input-shape C,H,W") from exc


def _cmd_export(args: argparse.Namespace) -> int:
    from spikegrad.build import from_checkpoint
    from spikegrad.nir import write_nir

    _output(args.out)
    checkpoint = _checkpoint(args.checkpoint, "exporting")
    run = from_checkpoint(checkpoint)
    shape = _parse_shape(args.input_shape) if args.input_shape else _checkpoint_input_shape(run)
    path = write_nir(run.model, args.out, shape, dt=args.dt, fold_gain=not args.keep_gain,
                     pooling=args.pooling)
    print(f"NIR graph of {checkpoint} (input {shape}, dt {args.dt:g} s) written to {path}")
    return 0


def _cmd_fdg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spikegrad.alignment_report import analyse_checkpoint, format_report, write_report

    _output(args.out)
    _require_matplotlib("fdg")  # before the sweep, which takes a while
    checkpoint = _checkpoint(args.checkpoint, "probing")
    report = analyse_checkpoint(
        checkpoint, layer=args.layer, epsilon=args.epsilon, num_weights=args.num_weights or None,
        batch_size=args.batch_size, split=args.split, seed=args.seed, points=args.points,
        factor=args.range, names=args.surrogates.split(",") if args.surrogates else None,
        device=args.device, overrides=args.set, batches=args.batches, extend=args.extend,
        bn_mode=args.bn_mode,
    )
    print(format_report(report))
    prefix = args.out or Path(checkpoint).with_name("fdg")
    json_path, png_path = write_report(report, prefix)
    print(f"\nwrote {json_path} and {png_path} ({report.seconds:.1f}s)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from spikegrad import models

    for name in models.list(args.pattern):
        print(f"{name:<14} {models.entry(name).description}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from spikegrad.recipes import format_table, recipe_rows

    print(format_table(recipe_rows()))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    import inspect

    from spikegrad.data import build_datasets, list_datasets
    from spikegrad.data._registry import dataset_builder

    def downloadable(name: str) -> bool:
        return "download" in inspect.signature(dataset_builder(name)).parameters

    if not downloadable(args.name):
        why = ("is built in (no files)" if args.name in ("digits", "cluttered_digits", "event_digits")
               else "comes with its Python package (see docs/datasets.md)"
               if args.name in ("animal_mnist", "mnist1d")
               else "cannot be downloaded automatically; see docs/datasets.md for where to get it")
        raise UserError(f"dataset {args.name!r} {why}; downloadable datasets: "
                        + ", ".join(n for n in list_datasets() if downloadable(n)))
    train_set, test_set, info = build_datasets(args.name, root=args.root, download=True)
    print(f"{args.name}: {len(train_set)} train / {len(test_set)} test samples in {args.root} "
          f"({info.description})")
    return 0


def _cmd_plot_gradients(args: argparse.Namespace) -> int:
    from spikegrad.gradient_plots import plot_gradients

    _output(args.out)
    _require_matplotlib("plot-gradients")
    out = plot_gradients(args.runs, args.out, labels=args.label or None, title=args.title)
    print(out)
    return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (not for flags, lists or None); epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or isinstance(default, bool) or default == [] \
                or default is argparse.SUPPRESS or not (action.option_strings or action.nargs == "?"):
            return text
        return f"{text} (default: %(default)s)"


def _command(sub: argparse._SubParsersAction, name: str, summary: str, examples: Sequence[str],
             description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, description and examples (``command  # note``)."""
    import textwrap

    description = textwrap.fill(description or summary[0].upper() + summary[1:] + ".", 79,
                                break_on_hyphens=False)
    return sub.add_parser(name, help=summary, description=description, formatter_class=_Formatter,
                          epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))


def _overrides(p: argparse.ArgumentParser, what: str, example: str, reads: str = "") -> None:
    """``--set``; ``reads``: which keys a command that reads only some takes, after a colon."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a key of {what}, e.g. --set {example} (repeatable){reads}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "train", "train from a YAML recipe (under torchrun: on every process)", [
        "spikegrad train configs/digits.yaml  # into runs/digits-dspike",
        "spikegrad train configs/digits.yaml --set model.T=6 --set train.epochs=30 --out runs/t6",
        "spikegrad train runs/t6 --resume  # continue (or finish) a run, with its own config",
        "spikegrad train configs/digits.yaml --set model.kind=ann  # the ANN twin: runs/digits-ann",
        "spikegrad train configs/digits.yaml --device cpu --set train.threads=2",
        "torchrun --standalone --nproc_per_node 2 -m spikegrad train configs/digits.yaml --out runs/ddp",
    ])
    p.add_argument("config", nargs="?", metavar="RECIPE",
                   help="a YAML recipe, e.g. configs/digits.yaml; with --resume it may be left out or "
                   "be the run folder: the run's own config.yaml")
    _overrides(p, "the recipe", "model.T=6")
    p.add_argument("--out", help="run folder (default: runs/<name>; the name is the recipe's, else "
                   "<dataset>-<method> such as digits-dspike-adaptive)")
    p.add_argument("--device", help="train.device for this run: auto, cpu, cuda, cuda:N or mps "
                   "(default: the recipe's)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the folder from its last.pt (mid-epoch if it stopped "
                   "there); without --set, with the run's own config.yaml; a finished run says so")
    p.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="continue from this checkpoint (e.g. RUN/last.prev.pt)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although the config changes what the run computes (e.g. optim.lr)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out folder that already holds a run (the old run's "
                        "files are removed first)")
    p.set_defaults(func=_cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "eval", "evaluate a checkpoint on its dataset", [
        "spikegrad eval runs/t6  # the run's best.pt (else last.pt)",
        "spikegrad eval runs/t6/last.pt --split train",
        "spikegrad eval runs/t6 --analysis  # per-layer firing rates, SOPs and energy",
        "spikegrad eval runs/t6 --analysis --json  # all of it as JSON",
        "spikegrad eval runs/t6 --raster all --samples 2  # spike rasters and membrane traces",
    ])
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint (.pt), or a run folder: its best.pt, else its last.pt")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: the run's evaluation set (its validation split when the stored "
                   "data.validation > 0; --set data.validation=0 for the test set)")
    _overrides(p, "the stored config that eval reads", "data.root=/data",
               ": the dataset's data.* keys, data.eval_batch_size, data.num_workers, train.device, "
               "train.amp, the readout's ltl.mode and ltl.T_warm, and with --analysis "
               "analysis.monitors, membrane, pj_per_ac, pj_per_mac; any other key is refused (the "
               "model is the checkpoint's)")
    p.add_argument("--device", help="override train.device: auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--analysis", action="store_true",
                   help="also per-layer firing rates, SOPs and energy (as in analysis.json), as a table")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON instead of text")
    p.add_argument("--raster", metavar="LAYER[,LAYER]",
                   help="also record spikes and membrane potentials of these neuron layers ('all': "
                   "every one) on the first samples: recording.npz, raster.png, membrane.png")
    p.add_argument("--samples", type=int, help="samples recorded with --raster (default: 4)")
    p.add_argument("--out", help="folder for the --raster files (default: the checkpoint's run folder; "
                   "its parent must exist)")
    p.set_defaults(func=_cmd_eval)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "calibrate", "apply device non-idealities to a trained SNN and calibrate it "
                 "(online LTL or BPTT)", [
                     "spikegrad calibrate runs/digits-ltl-offline --teacher runs/digits-ltl-offline/teacher "
                     "--sigma 0.2 --stuck-at-zero 0.1 --steps 50 --out calibrated.pt",
                     "spikegrad calibrate runs/t6 --method bptt --sigma 0.3 --steps 100",
                     "spikegrad eval calibrated.pt  # the calibrated model, faults included",
                 ])
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="the trained SNN: a checkpoint, or a run folder (its best.pt, else last.pt)")
    p.add_argument("--teacher", help="checkpoint (or run folder) of its ANN teacher, for --method ltl-online")
    p.add_argument("--method", choices=("none", "ltl-online", "bptt"), default="ltl-online",
                   help="none: faults only; ltl-online: local learning against the teacher; bptt: "
                   "surrogate-gradient fine-tuning")
    p.add_argument("--steps", type=int,
                   help=f"optimizer steps (default: {CALIBRATION_STEPS}; not with --method none); the "
                   "training data is cycled when one pass has fewer batches")
    p.add_argument("--lr", type=float, help="learning rate (default: the stored optim.lr; not with "
                   "--method none or --steps 0)")
    p.add_argument("--sigma", type=float, default=0.0, help="multiplicative weight variation (σ)")
    p.add_argument("--stuck-at-zero", type=float, default=0.0, help="fraction of weights stuck at 0")
    p.add_argument("--stuck-at-max", type=float, default=0.0, help="fraction of weights stuck at ±max")
    p.add_argument("--bits", type=int, help="weight quantisation bits (default: none)")
    p.add_argument("--threshold-sigma", type=float, default=0.0, help="variation of the thresholds")
    p.add_argument("--seed", type=int, default=0, help="seed of the device faults")
    p.add_argument("--out", help="save the calibrated model (faults applied) as a checkpoint that "
                   "`spikegrad eval` reads; its folder must exist")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    _overrides(p, "the stored config that calibration reads", "data.batch_size=16",
               ": data.*, train.device, and when it trains the optimizer (not optim.weight_decay), "
               "train.seed, amp, grad_clip, the loss (bptt) or ltl's percentile, layer_weights, "
               "T_warm, distill (ltl-online); any other key is refused (the model is the "
               "checkpoint's; --steps, --lr and --method set the rest)")
    p.set_defaults(func=_cmd_calibrate)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "demo", "train each method on the built-in digits and compare", [
        "spikegrad demo  # five runs under runs/demo, then the table",
        "spikegrad demo --resume  # after a stop: finish the rows, skip finished ones",
        "spikegrad demo --overwrite  # train every row again",
        "spikegrad demo --quick --out /tmp/demo  # two epochs per row (a smoke test)",
    ])
    p.add_argument("--out", default="runs/demo", help="folder for the run folders")
    p.add_argument("--quick", action="store_true", help="two epochs per row (a smoke test)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted demo: each row resumes, or is kept if finished")
    p.add_argument("--overwrite", action="store_true", help="train every row again in a folder that "
                   "holds an earlier demo")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads of every row (train.threads; default: 1, so that the "
                   "table does not depend on the machine's core count)")
    p.set_defaults(func=_cmd_demo)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "report", "an HTML page with the plots of one or more runs", [
        "spikegrad report runs/demo  # every run of the demo: runs/demo/report.html",
        "spikegrad report runs/t6 runs/evo --out compare.html --title 'T = 6 vs shortcut'",
    ])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders (a folder of run folders, such as runs/demo, expands)")
    p.add_argument("--out", help="HTML file (default: RUN_DIR/report.html, or report.html in the "
                   "runs' common folder); its folder must exist")
    p.add_argument("--title", help="page title")
    p.set_defaults(func=_cmd_report)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "export", "export a trained spiking model (NIR)", [
        "spikegrad export runs/t6/best.pt --format nir --out t6.nir",
        "spikegrad export runs/t6 --out t6-norse.nir --pooling sum  # for Norse",
    ])
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint, or a run folder (its best.pt, else last.pt)")
    p.add_argument("--format", choices=("nir",), default="nir", help="file format")
    p.add_argument("--out", required=True, help="output file, e.g. model.nir (its folder must exist)")
    p.add_argument("--dt", type=float, default=1e-4,
                   help="integration step of the graph, seconds (1e-4 is what snnTorch assumes)")
    p.add_argument("--pooling", choices=("avg", "sum"), default="avg",
                   help="average pooling as AvgPool2d, or SumPool2d with 1/k in the weights "
                   "(for Norse)")
    p.add_argument("--keep-gain", action="store_true",
                   help="keep each neuron's input gain in its r instead of folding it into weights")
    p.add_argument("--input-shape", help="one input sample, C,H,W (default: from the checkpoint)")
    p.set_defaults(func=_cmd_export)


def _add_recipes(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "recipes", "list the recipes in configs/ with their papers' accuracy",
                 ["spikegrad recipes"])
    p.set_defaults(func=_cmd_recipes)


#: the registered datasets ``spikegrad download`` fetches (tests keep this list true)
DOWNLOADABLE = ("cifar10", "cifar100", "cifar10_dvs", "dvs_gesture", "fashion_mnist", "mnist", "nmnist",
                "tiny_imagenet")


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "download", "download, check and unpack a dataset into a folder", [
        "spikegrad download cifar10 --root data/cifar10",
        "spikegrad train configs/base_cifar10.yaml --set data.root=data/cifar10  # then train on it",
    ], description="Download, check (MD5) and unpack a dataset into a folder. Downloadable: "
        + ", ".join(DOWNLOADABLE) + ". The built-in digits need no files, animal_mnist and mnist1d "
        "come with their Python packages; ImageNet must be fetched by hand (docs/datasets.md).")
    p.add_argument("name", metavar="DATASET", help="one of: " + ", ".join(DOWNLOADABLE))
    p.add_argument("--root", required=True, help="folder for the dataset files (data.root)")
    p.set_defaults(func=_cmd_download)


def _add_plot_gradients(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "plot-gradients", "plot the gradient diagnostics of runs side by side", [
        "spikegrad plot-gradients runs/t6 runs/evo --out gradients.png",
        "spikegrad plot-gradients runs/t6 runs/evo --label 'T=6' --label shortcut --out g.png",
    ])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (holding gradients.jsonl)")
    p.add_argument("--out", required=True, help="image to write, e.g. gradients.png (its folder must exist)")
    p.add_argument("--label", action="append", default=[], help="label of each run, in order (repeatable)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=_cmd_plot_gradients)


def _add_fdg(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "fdg", "cosine similarity of every surrogate's gradient with the finite "
                 "difference gradient, over a sweep of its sharpness", [
                     "spikegrad fdg runs/adaptive/last.pt  # table, fdg.json and fdg.png beside it",
                     "spikegrad fdg runs/t6 --surrogates dspike,sigmoid --points 5 --batches 1",
                 ])
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint, or a run folder (its best.pt, else last.pt)")
    p.add_argument("--layer", help="probed weight layer (qualified name; default: the first)")
    p.add_argument("--epsilon", type=float,
                   help="FDG step as a fraction of the layer's weight RMS (default: dspike.epsilon's)")
    p.add_argument("--num-weights", type=int, default=256,
                   help="probe a seeded random subset of K weights (0: all)")
    p.add_argument("--batch-size", type=int, default=128, help="samples in the fixed batch")
    p.add_argument("--bn-mode", choices=("train", "eval"),
                   help="batch norm: train (the batch's own statistics) or eval (running statistics); "
                        "default: dspike.bn_mode's")
    p.add_argument("--split", choices=("train", "test"), default="train", help="data of the probe batches")
    p.add_argument("--seed", type=int, default=0, help="draws the batch and the probed weights")
    p.add_argument("--points", type=int, default=9, help="sharpness values per surrogate")
    p.add_argument("--range", type=float, default=8.0,
                   help="sweep from default/RANGE to default·RANGE, geometrically")
    p.add_argument("--surrogates", help="comma-separated subset (default: all registered)")
    p.add_argument("--batches", type=int, default=3,
                   help="probe batches (seeds SEED, SEED+1, ...): mean and error bars")
    p.add_argument("--extend", type=int, default=4,
                   help="points added past an end of the sweep where the best lies (0: off)")
    p.add_argument("--out", help="output prefix for .json and .png (default: fdg beside the "
                                 "checkpoint; its folder must exist)")
    p.add_argument("--device", help="override train.device: auto, cpu, cuda, cuda:N or mps")
    _overrides(p, "the stored config that fdg reads", "data.root=/data",
               ": the dataset's data.* keys, train.device and the loss's train.* keys; any other "
               "key is refused (the model is the checkpoint's; the probe's own flags replace the "
               "dspike.* keys)")
    p.set_defaults(func=_cmd_fdg)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "models", "list the registered models", [
        "spikegrad models", "spikegrad models 'resnet*'"])
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern of the names")
    p.set_defaults(func=_cmd_models)


def build_parser() -> argparse.ArgumentParser:
    """The ``spikegrad`` parser (building it imports no torch: ``spikegrad --help`` is quick)."""
    parser = argparse.ArgumentParser(
        prog="spikegrad", description="Train spiking neural networks by gradient descent.",
        formatter_class=_Formatter, epilog="examples:\n"
        "  spikegrad demo                           # every method on the built-in digits\n"
        "  spikegrad train configs/digits.yaml      # one run: runs/digits-dspike\n"
        "  spikegrad eval runs/digits-dspike --analysis\n"
        "  spikegrad report runs/demo               # the plots of the demo's runs\n"
        "  spikegrad COMMAND --help                 # a command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"spikegrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_calibrate(sub)
    _add_demo(sub)
    _add_report(sub)
    _add_export(sub)
    _add_recipes(sub)
    _add_download(sub)
    _add_plot_gradients(sub)
    _add_fdg(sub)
    _add_models(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from spikegrad.resume import TrainingStopped  # torch, only once a command runs

    try:
        return args.func(args)
    except UserError as exc:
        where = f" (rank {_rank()})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        message = f"spikegrad: error{where}: {exc}"
        sys.stderr.write(message + "\n")  # one write: the ranks' lines do not interleave
        sys.stderr.flush()
        _tell_torchrun(message)
        return EXIT_USER_ERROR
    except TrainingStopped as exc:
        if _rank() == 0:
            print(f"spikegrad: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("spikegrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
