"""Write docs/api.md, the API reference, from the docstrings of spikegrad's public modules.

    PYTHONPATH=src python tools/api_reference.py          # rewrite docs/api.md
    PYTHONPATH=src python tools/api_reference.py --check  # exit 1 if docs/api.md is stale

Every module of the package whose dotted name has no part starting with ``_`` is listed
with the first paragraph of its docstring, then its public functions and classes (the
names in ``__all__``, else every name not starting with ``_`` defined in the module), each
with its signature and the first paragraph of its docstring; a class also lists its public
methods and properties. Names a module only re-exports are listed under it by name.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "api.md"
PACKAGE = "spikegrad"

HEADER = """# API reference

Generated from the docstrings by `PYTHONPATH=src python tools/api_reference.py`; do not
edit by hand (`tests/test_api_reference.py` fails when this file is stale). Every public
module with its public functions and classes: the signature and the first paragraph of the
docstring. The docstrings hold the rest (formulas, units, conventions).
"""


def public_modules() -> list[ModuleType]:
    """The package and its submodules without a ``_``-prefixed part, sorted by name."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE] + [m.name for m in pkgutil.walk_packages(package.__path__, PACKAGE + ".")]
    names = sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))
    return [importlib.import_module(n) for n in names]


def first_paragraph(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring on one line ("" without one, or for the
    docstring a dataclass writes itself, which repeats the signature)."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""
    paragraph = doc.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines()).strip()


_ADDRESS = re.compile(r"<(?:function|built-in function|class|bound method) ([\w.<>]+)(?: at 0x[0-9a-f]+)?>")


class _Annotation(str):
    """An annotation kept as the text it was written as (``from __future__ import annotations``
    stores them as strings), shown without the quotes ``repr`` would add."""

    def __repr__(self) -> str:
        return str(self)


def _unquoted(sig: inspect.Signature) -> inspect.Signature:
    """``sig`` with its string annotations shown as written: ``T: int``, not ``T: 'int'``."""
    def bare(annotation: object) -> object:
        return _Annotation(annotation) if isinstance(annotation, str) else annotation

    params = [p.replace(annotation=bare(p.annotation)) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=bare(sig.return_annotation))


def signature(obj: object) -> str:
    """``(a: int, b=1) -> str``, with defaults that print memory addresses shown by name; a
    class's without the ``-> None`` of its ``__init__``."""
    try:
        sig = _unquoted(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    if inspect.isclass(obj):
        sig = sig.replace(return_annotation=inspect.Signature.empty)
    text = str(sig)
    text = _ADDRESS.sub(lambda m: m.group(1).split(".")[-1], text)
    text = text.replace("<dataclasses._MISSING_TYPE object>", "MISSING")
    text = re.sub(r"<([\w.]+) object(?: at 0x[0-9a-f]+)?>", lambda m: m.group(1).split(".")[-1] + "()", text)
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def exported(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return sorted(n for n, obj in vars(module).items() if not n.startswith("_")
                  and (inspect.isclass(obj) or inspect.isfunction(obj))
                  and getattr(obj, "__module__", None) == module.__name__)


def _line(text: str, doc: str) -> str:
    return f"- {text}" + (f": {doc}" if doc else "")


def class_members(cls: type) -> list[str]:
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            lines.append("  " + _line(f"`{name}` (property)", first_paragraph(member)))
            continue
        if isinstance(member, (classmethod, staticmethod)):
            func = member.__func__
            kind = "classmethod " if isinstance(member, classmethod) else "staticmethod "
        elif inspect.isfunction(member):
            func, kind = member, ""
        else:
            continue
        sig = signature(func)
        if not isinstance(member, staticmethod):  # drop self / cls
            sig = re.sub(r"^\((self|cls)(, )?", "(", sig)
        lines.append("  " + _line(f"{kind}`{name}{sig}`", first_paragraph(func)))
    return lines


def module_section(module: ModuleType) -> list[str]:
    lines = [f"## `{module.__name__}`", ""]
    summary = first_paragraph(module)
    if summary:
        lines += [summary, ""]
    reexported = []
    for name in exported(module):
        obj = getattr(module, name, None)
        if obj is None or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            reexported.append(f"`{name}` ({obj.__module__})")
            continue
        if inspect.isclass(obj):
            lines.append(_line(f"class `{name}{signature(obj)}`", first_paragraph(obj)))
            lines += class_members(obj)
        else:
            lines.append(_line(f"`{name}{signature(obj)}`", first_paragraph(obj)))
    if reexported:
        lines += ["", "Re-exports: " + ", ".join(reexported) + "."]
    lines.append("")
    return lines


def _anchor(name: str) -> str:
    return "#" + name.replace(".", "")


def module_index(modules: list[ModuleType]) -> list[str]:
    """One line per package: the package, then its modules by their last name."""
    packages = [m for m in modules if hasattr(m, "__path__")]
    lines = ["Modules:", ""]
    for package in packages:
        inside = [m.__name__ for m in modules if m is not package and not hasattr(m, "__path__")
                  and m.__name__.rpartition(".")[0] == package.__name__]
        links = ", ".join(f"[`{n.rpartition('.')[2]}`]({_anchor(n)})" for n in inside)
        head = f"- [`{package.__name__}`]({_anchor(package.__name__)})"
        lines.append(f"{head}: {links}" if links else head)
    return [*lines, ""]


def render() -> str:
    modules = public_modules()
    lines = [HEADER, *module_index(modules)]
    for module in modules:
        lines += module_section(module)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text() if TARGET.is_file() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run PYTHONPATH=src python tools/api_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
