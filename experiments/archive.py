"""Keep an experiment's evidence without its checkpoints: the records that ``--report``,
``--verify`` and a continued run read.

    python -m experiments.archive runs/experiments/dspike_surrogates experiments/records/dspike_surrogates

An experiment's output folder is mostly checkpoints (three per run, hundreds of kB each for the
small networks). The archive copies what the tables are made of and nothing else:

- ``results.json``, ``results.md`` and ``curves.png`` of the experiment, where present;
- for every *finished* run (its ``experiment_run.json`` written): that record (the resolved
  config, seed, rate, machine and commit), ``metrics.jsonl`` (every epoch), ``summary.json`` and
  ``config.yaml``;
- the ``last.pt`` of a finished run that another run names as a dependency (an LTL teacher), so
  that the runs still to come can start from the archive.

Runs still in progress are left out (they would start again from their first epoch). From the
archive, the experiment's own command with ``--out ARCHIVE --report`` writes the same tables,
``--verify ARCHIVE/results.json`` trains a stored run again, and the command without
``--report`` continues the experiment (copy the archive to a scratch folder first, since it
then writes checkpoints there). Archiving again replaces an older archive: it holds
what ``out`` holds now.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from experiments.runner import PLOT, RECORD, RESULTS, TABLE
from spikegrad.errors import UserError

#: the files of a finished run that the tables, ``--verify`` and a continued run read
RUN_FILES = (RECORD, "metrics.jsonl", "summary.json", "config.yaml")


def archive(out: str | Path, dest: str | Path) -> dict[str, int]:
    """Copy the evidence of the experiment in ``out`` into ``dest``; returns how many finished
    runs were copied, how many unfinished ones were left out, and how many checkpoints were kept."""
    out, dest = Path(out).resolve(), Path(dest).resolve()
    if not (out / "runs").is_dir():
        raise UserError(f"{str(out)!r} holds no experiment (no runs/ folder): give the --out of an "
                        "experiment command")
    if dest == out or out in dest.parents or dest in out.parents:
        raise UserError(f"the archive {str(dest)!r} and the experiment {str(out)!r} must not contain "
                        "each other: choose a folder outside the experiment's")
    if dest.exists() and any(dest.iterdir()) and not (dest / "runs").is_dir():
        raise UserError(f"{str(dest)!r} is a folder that holds no archive (no runs/ folder): give a "
                        "new folder or an earlier archive, which is replaced")
    records = sorted((out / "runs").rglob(RECORD))
    needed: set[Path] = set()  # the checkpoints other runs were started from
    for path in records:
        try:
            depends = json.loads(path.read_text()).get("depends") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise UserError(f"the run record {str(path)!r} is not a JSON object ({exc}); delete that "
                            "run's folder (the experiment trains it again) and archive again") from exc
        needed.update((out / relative).resolve() for relative in depends.values())
    unfinished = [p.parent for p in (out / "runs").rglob("last.pt") if not (p.parent / RECORD).is_file()]
    # built beside the destination, then swapped in: an earlier archive's runs that are no
    # longer finished in ``out`` do not survive, and a failed copy leaves the old archive whole
    staging = dest.with_name(dest.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    kept = 0
    for path in records:
        folder = path.parent
        target = staging / folder.relative_to(out)
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, target / name)
        if (folder / "last.pt").resolve() in needed:
            shutil.copy2(folder / "last.pt", target / "last.pt")
            kept += 1
    staging.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS, TABLE, PLOT):
        if (out / name).is_file():
            shutil.copy2(out / name, staging / name)
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old)
    else:
        staging.rename(dest)
    return {"runs": len(records), "unfinished": len(unfinished), "checkpoints": kept}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.archive", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the experiment's output folder (its --out)")
    parser.add_argument("dest", help="the archive folder (created or updated)")
    args = parser.parse_args(argv)
    try:
        counts = archive(args.out, args.dest)
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"archived {counts['runs']} finished runs ({counts['checkpoints']} checkpoints other runs need) "
          f"into {args.dest}; {counts['unfinished']} unfinished runs left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
