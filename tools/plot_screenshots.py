"""Screenshots of spikegrad's plots for the docs, from one fixed set of short demo runs.

    python tools/plot_screenshots.py --runs runs/screens --out docs/img/after

trains (once; an existing run folder is reused) the demo's five rows with ``--epochs``
epochs each (and the ``--set`` overrides) into ``--runs``, then writes into ``--out``: the
run report's images that the docs show (``report-*.png``, cut out of the HTML page;
``--all``: every one),
``gradients.png`` of ``spikegrad plot-gradients`` for the Dspike and evolutionary rows, and
``fdg.png`` of ``spikegrad fdg`` on the Dspike row's ``last.pt`` (its JSON is kept in
``--runs`` and plotted again on later calls). Unless ``--skip raster``,
``spikegrad eval --raster all`` first records the Dspike row's spikes into its folder (the
report's raster section; the option appeared after the "before" pictures). Images are drawn with the
code that is installed, so the same runs give before/after pictures of a change to the
plotting code. PNGs are saved with a 256-colour palette to keep them small.
"""

from __future__ import annotations

import argparse
import base64
import re
import subprocess
import sys
from pathlib import Path


def train_runs(runs: Path, epochs: int, overrides: list[str] = ()) -> None:
    from spikegrad import train
    from spikegrad.demo import demo_configs

    for row, config in demo_configs(out_dir=runs):
        folder = runs / row.folder
        if (folder / "summary.json").is_file():
            continue
        config = config.with_overrides([*overrides, f"train.epochs={epochs}", "train.progress=false"])
        train(config, folder, verbose=False, overwrite=True)  # a stopped run starts over


#: the report's images that the screenshots show (the rest are written with --all)
SHOWN = ("learning-rate-per-epoch", "synaptic-operations-and-energy", "sops-per-epoch",
         "operations-and-energy-per-epoch",
         "firing-rate-per-layer-and-time-step", "first-layer-gradient-histograms",
         "spike-raster", "membrane-traces")


def report_images(runs: Path, out: Path, every: bool = False) -> list[Path]:
    from spikegrad.report import find_runs, render_report

    page = render_report(find_runs([runs]), "screens")
    written = []
    for alt, data in re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([^']+)'>", page):
        slug = re.sub(r"[^a-z0-9]+", "-", alt.lower()).strip("-")[:60]
        if not every and not slug.startswith(SHOWN):
            continue
        path = out / f"report-{slug}.png"
        path.write_bytes(base64.b64decode(data))
        written.append(path)
    return written


def shrink(path: Path) -> None:
    """Re-save a PNG with a 256-colour palette (plots have few colours; about 3x smaller)."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spikegrad", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/screens", help="folder of the run folders")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per demo row")
    parser.add_argument("--all", action="store_true", help="every image of the report")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("raster", "report", "gradients", "fdg"),
                        help="leave out a kind of image (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of every demo row's config (repeatable), e.g. model.width=0.25")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_runs(runs, args.epochs, args.set)
    if "raster" not in args.skip:  # spike rasters of the Dspike row, shown by the report
        cli("eval", str(runs / "dspike" / "last.pt"), "--raster", "all", "--samples", "3")
    if "report" not in args.skip:
        for path in report_images(runs, out, args.all):
            print(path)
    if "gradients" not in args.skip:
        cli("plot-gradients", str(runs / "dspike"), str(runs / "evolutionary"),
            "--out", str(out / "gradients.png"))
    if "fdg" not in args.skip:
        from spikegrad.alignment_report import plot_report, read_report

        if not (runs / "fdg.json").is_file():  # computed once (minutes); plotted by this code
            cli("fdg", str(runs / "dspike" / "last.pt"), "--out", str(runs / "fdg"))
        plot_report(read_report(runs / "fdg.json"), out / "fdg.png")
    for path in sorted(out.glob("*.png")):
        shrink(path)


if __name__ == "__main__":
    main()
