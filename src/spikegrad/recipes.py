"""The recipes shipped in ``spikegrad/configs``: finding one by name, listing them with what
their papers report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spikegrad.config import load_config
from spikegrad.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class RecipeRow:
    file: str
    dataset: str
    model: str
    T: int | None
    accuracy: float | None
    source: str
    error: str = ""


def recipe_files(folder: Path | None = None) -> list[Path]:
    """The recipes (``*.yaml``) in ``folder``, by name; None: the packaged ones."""
    return sorted((CONFIG_DIR if folder is None else folder).glob("*.yaml"))


def recipe_path(name: str | Path, what: str = "recipe") -> Path:
    """The recipe ``name``: a YAML file at that path, else the packaged recipe of that name
    (``digits`` or ``digits.yaml``); ``what`` names the setting in the error."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{path.stem if path.suffix == '.yaml' else name}.yaml"
    if packaged.is_file():
        return packaged
    raise UserError(f"{what} {str(name)!r} is neither a file nor a packaged recipe; packaged "
                    f"recipes: {', '.join(p.stem for p in recipe_files())}")


def recipe_rows(folder: Path | None = None) -> list[RecipeRow]:
    """One row per recipe in ``folder`` (None: the packaged ones; ``extends`` resolved); a
    recipe that fails to load says why."""
    rows = []
    for path in recipe_files(folder):
        try:
            config = load_config(path)
        except UserError as exc:
            rows.append(RecipeRow(path.name, "?", "?", None, None, "", str(exc)))
            continue
        T = None if config.model.kind == "ann" else config.model.T
        rows.append(RecipeRow(path.name, config.data.name, config.model.name, T,
                              config.paper.accuracy, config.paper.source))
    return rows


def format_table(rows: list[RecipeRow]) -> str:
    """A plain-text table: recipe, dataset, model, T, the paper's accuracy and its source."""
    header = ("recipe", "dataset", "model", "T", "paper %", "source")
    lines = [header]
    for r in rows:
        if r.error:
            lines.append((r.file, "", "", "", "", f"(cannot load: {r.error})"))
            continue
        lines.append((r.file, r.dataset, r.model, "-" if r.T is None else str(r.T),
                      "-" if r.accuracy is None else f"{r.accuracy:.2f}", r.source or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )
