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
from spikegrad.resume import TrainingStopped

EXIT_USER_ERROR = 2


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spikegrad.config import load_config
    from spikegrad.resume import resume_checkpoint_path
    from spikegrad.run import train
    from spikegrad.rundir import default_run_folder

    resume_from = Path(args.resume_from) if args.resume_from else None
    if args.config is None:  # resuming without a recipe: the run folder's own config
        folder = resume_from.parent if resume_from else Path(args.out) if args.out else None
        if not (args.resume or resume_from) or folder is None:
            raise UserError("give a recipe (spikegrad train configs/digits.yaml), or resume a run "
                            "with --resume --out RUN_FOLDER or --resume-from CHECKPOINT")
        config = load_config(folder / "config.yaml", args.set)
    else:
        config = load_config(args.config, args.set)
    out = args.out or (str(resume_from.parent) if resume_from else str(default_run_folder(config.name)))
    if args.resume and resume_from is None:
        resume_from = resume_checkpoint_path(out)
    # a folder holding another run is refused (or, with --overwrite, emptied) under its lock
    summary = train(config, out, resume_from=resume_from,
                    allow_config_change=args.allow_config_change, overwrite=args.overwrite)
    if _rank() == 0:
        print(json.dumps(summary, indent=2))
    return 0


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def _cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from spikegrad.build import datasets_from_config, from_checkpoint
    from spikegrad.data.from_config import eval_split
    from spikegrad.data.loader import collate_for
    from spikegrad.evaluation import evaluate_model
    from spikegrad.methods.ltl import readout_start
    from spikegrad.trainer import resolve_device

    run = from_checkpoint(args.checkpoint, args.set)
    model, config = run.model, run.config
    raster = _raster_layers(args, model)
    train_set, test_set, _ = datasets_from_config(config.data)
    dataset = test_set if args.split == "test" else train_set
    loader = DataLoader(dataset, batch_size=config.data.eval_batch_size,
                        collate_fn=collate_for(dataset))
    device = resolve_device(args.device or config.train.device)
    result = evaluate_model(model.to(device), loader, device,
                            analysis=config.analysis if args.analysis else None,
                            readout_start=readout_start(config, getattr(model, "T", 1)))
    split = eval_split(config.data) if args.split == "test" else args.split
    result.update({"checkpoint": args.checkpoint, "split": split,
                   "method": run.payload.get("method"), "epoch": run.payload.get("epoch")})
    if raster:
        from pathlib import Path

        from spikegrad.recording import record_and_plot

        out = args.out or Path(args.checkpoint).parent  # the run folder, where `report` finds it
        samples = 4 if args.samples is None else args.samples
        result["raster"] = [str(p) for p in record_and_plot(
            model, dataset, raster, samples, out, device, collate_for(dataset), args.checkpoint)]
    print(json.dumps(result, indent=2))
    return 0


def _raster_layers(args: argparse.Namespace, model) -> list[str]:
    """The layers of ``eval --raster`` (checked before evaluating); [] without it."""
    if not args.raster:
        if args.samples is not None or args.out is not None:
            raise UserError("--samples and --out go with --raster LAYER[,LAYER] (spike rasters)")
        return []
    from spikegrad.recording import resolve_layers

    names = [n.strip() for n in args.raster.split(",") if n.strip()]
    resolve_layers(model, names)
    return names


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from spikegrad.build import datasets_from_config, from_checkpoint
    from spikegrad.calibration import calibrate
    from spikegrad.devices import DeviceModel
    from spikegrad.methods.ltl import readout_start

    run = from_checkpoint(args.checkpoint, args.set)
    model, config = run.model, run.config
    teacher = from_checkpoint(args.teacher).model if args.teacher else None
    train_set, test_set, _ = datasets_from_config(config.data)
    devices = DeviceModel(args.sigma, args.stuck_at_zero, args.stuck_at_max, args.bits,
                          args.threshold_sigma, args.seed)
    result = calibrate(model, devices, train_set, test_set, config, args.method, args.steps,
                       teacher=teacher, readout_start=readout_start(config, getattr(model, "T", 1)),
                       lr=args.lr)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from spikegrad.demo import run_demo

    table = run_demo(args.out, quick=args.quick)
    print("\n" + table)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from spikegrad.report import write_report

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

    run = from_checkpoint(args.checkpoint)
    shape = _parse_shape(args.input_shape) if args.input_shape else _checkpoint_input_shape(run)
    path = write_nir(run.model, args.out, shape, dt=args.dt, fold_gain=not args.keep_gain,
                     pooling=args.pooling)
    print(f"NIR graph of {args.checkpoint} (input {shape}, dt {args.dt:g} s) written to {path}")
    return 0


def _cmd_fdg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spikegrad.alignment_report import analyse_checkpoint, format_report, write_report

    report = analyse_checkpoint(
        args.checkpoint, layer=args.layer, epsilon=args.epsilon, num_weights=args.num_weights or None,
        batch_size=args.batch_size, split=args.split, seed=args.seed, points=args.points,
        factor=args.range, names=args.surrogates.split(",") if args.surrogates else None,
        device=args.device, overrides=args.set, batches=args.batches, extend=args.extend,
        bn_mode=args.bn_mode,
    )
    print(format_report(report))
    prefix = args.out or Path(args.checkpoint).with_name("fdg")
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

    out = plot_gradients(args.runs, args.out, labels=args.label or None, title=args.title)
    print(out)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train from a YAML recipe (under torchrun: on every process)")
    p.add_argument("config", nargs="?", help="recipe, e.g. configs/digits.yaml (optional with "
                   "--resume: the run folder's config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.T=6 (repeatable)")
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt, mid-epoch if it stopped there")
    p.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="continue from this checkpoint (e.g. RUN/last.prev.pt)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although the config changes what the run computes (e.g. optim.lr)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out folder that already holds a run (the old run's "
                        "files are removed first)")
    p.set_defaults(func=_cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset")
    p.add_argument("checkpoint")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: the run's evaluation set (its validation split when the stored "
                   "data.validation > 0; --set data.validation=0 for the test set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the stored config, e.g. --set data.root=/data")
    p.add_argument("--device", help="override train.device")
    p.add_argument("--analysis", action="store_true",
                   help="also per-layer firing rates, SOPs and energy (as in analysis.json)")
    p.add_argument("--raster", metavar="LAYER[,LAYER]",
                   help="also record spikes and membrane potentials of these neuron layers ('all': "
                   "every one) on the first samples: recording.npz, raster.png, membrane.png")
    p.add_argument("--samples", type=int, help="samples recorded with --raster (default 4)")
    p.add_argument("--out", help="folder for the --raster files (default: the checkpoint's run folder)")
    p.set_defaults(func=_cmd_eval)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="apply device non-idealities to a trained SNN and "
                       "calibrate it (online LTL or BPTT)")
    p.add_argument("checkpoint", help="the trained SNN")
    p.add_argument("--teacher", help="checkpoint of its ANN teacher (for --method ltl-online)")
    p.add_argument("--method", choices=("none", "ltl-online", "bptt"), default="ltl-online")
    p.add_argument("--steps", type=int, default=50, help="calibration budget (optimizer steps)")
    p.add_argument("--lr", type=float, help="learning rate (default: the stored optim.lr)")
    p.add_argument("--sigma", type=float, default=0.0, help="multiplicative weight variation")
    p.add_argument("--stuck-at-zero", type=float, default=0.0, help="fraction of weights at 0")
    p.add_argument("--stuck-at-max", type=float, default=0.0, help="fraction of weights at ±max")
    p.add_argument("--bits", type=int, help="weight quantisation (default: none)")
    p.add_argument("--threshold-sigma", type=float, default=0.0, help="threshold variation")
    p.add_argument("--seed", type=int, default=0, help="seed of the device faults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the stored config, e.g. --set data.batch_size=16")
    p.set_defaults(func=_cmd_calibrate)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train each method on the built-in digits and compare")
    p.add_argument("--out", default="runs/demo", help="folder for the run folders")
    p.add_argument("--quick", action="store_true", help="two epochs per row (a smoke test)")
    p.set_defaults(func=_cmd_demo)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="an HTML page with the plots of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders (a folder of run folders, such as runs/demo, expands)")
    p.add_argument("--out", help="HTML file (default: RUN_DIR/report.html, or report.html in the "
                   "runs' common folder)")
    p.add_argument("--title", help="page title")
    p.set_defaults(func=_cmd_report)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained spiking model (NIR)")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("nir",), default="nir", help="file format (nir)")
    p.add_argument("--out", required=True, help="output file, e.g. model.nir")
    p.add_argument("--dt", type=float, default=1e-4,
                   help="integration step of the graph, seconds (default 1e-4, as snnTorch assumes)")
    p.add_argument("--pooling", choices=("avg", "sum"), default="avg",
                   help="average pooling as AvgPool2d, or SumPool2d with 1/k in the weights "
                   "(for Norse)")
    p.add_argument("--keep-gain", action="store_true",
                   help="keep each neuron's input gain in its r instead of folding it into weights")
    p.add_argument("--input-shape", help="one input sample, C,H,W (default: from the checkpoint)")
    p.set_defaults(func=_cmd_export)


def _add_recipes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the recipes in configs/ with their papers' accuracy")
    p.set_defaults(func=_cmd_recipes)


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download, check and unpack a dataset into a folder")
    p.add_argument("name", help="registered dataset, e.g. cifar10")
    p.add_argument("--root", required=True, help="folder for the dataset files (data.root)")
    p.set_defaults(func=_cmd_download)


def _add_plot_gradients(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot-gradients", help="plot the gradient diagnostics of runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (holding gradients.jsonl)")
    p.add_argument("--out", required=True, help="image to write, e.g. gradients.png")
    p.add_argument("--label", action="append", default=[], help="label of each run, in order")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=_cmd_plot_gradients)


def _add_fdg(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fdg", help="cosine similarity of every surrogate's gradient with the "
                                   "finite difference gradient, over a sweep of its sharpness")
    p.add_argument("checkpoint")
    p.add_argument("--layer", help="probed weight layer (qualified name; default: the first)")
    p.add_argument("--epsilon", type=float,
                   help="FDG step as a fraction of the layer's weight RMS (default: dspike.epsilon's)")
    p.add_argument("--num-weights", type=int, default=256,
                   help="probe a seeded random subset of K weights (default 256; 0: all)")
    p.add_argument("--batch-size", type=int, default=128, help="samples in the fixed batch")
    p.add_argument("--bn-mode", choices=("train", "eval"),
                   help="batch norm: train (the batch's own statistics) or eval (running statistics); "
                        "default: dspike.bn_mode's")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--seed", type=int, default=0, help="draws the batch and the probed weights")
    p.add_argument("--points", type=int, default=9, help="sharpness values per surrogate")
    p.add_argument("--range", type=float, default=8.0,
                   help="sweep from default/RANGE to default·RANGE, geometrically (default 8)")
    p.add_argument("--surrogates", help="comma-separated subset (default: all registered)")
    p.add_argument("--batches", type=int, default=3,
                   help="probe batches (seeds SEED, SEED+1, ...): mean and error bars (default 3)")
    p.add_argument("--extend", type=int, default=4,
                   help="points added past an end of the sweep where the best lies (default 4; 0: off)")
    p.add_argument("--out", help="output prefix for .json and .png (default: fdg beside the "
                                 "checkpoint)")
    p.add_argument("--device", help="override train.device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data.* or train.* key of the stored config (the model is "
                        "the checkpoint's), e.g. --set data.root=/data")
    p.set_defaults(func=_cmd_fdg)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=_cmd_models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikegrad", description="Train spiking neural networks by gradient descent."
    )
    parser.add_argument("--version", action="version", version=f"spikegrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
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
    try:
        return args.func(args)
    except UserError as exc:
        where = f" (rank {_rank()})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"spikegrad: error{where}: {exc}", file=sys.stderr)
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
