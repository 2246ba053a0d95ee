"""Reading YAML (recipes, a run's ``config.yaml``, ``--set`` values) with bounded cost.

PyYAML's ``safe_load`` runs no code, but a 500-byte file can still hold a billion values
through aliases (``&a [*b, *b, ...]`` nested ten deep), which any later deep copy expands,
and it silently keeps the last of two equal keys. :func:`load_yaml` composes the document
first, then checks it before building any Python value:

- the text is at most ``MAX_BYTES`` and UTF-8 (else the error names the line of the bad byte);
- with every alias expanded, the document holds at most ``MAX_NODES`` values (a recursive
  alias counts as infinitely many) and nests at most ``MAX_DEPTH`` levels;
- no mapping has the same key twice (the error names the key's path and both lines).

Every problem is a :class:`~spikegrad.errors.UserError` naming the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from spikegrad.errors import UserError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "load_yaml", "read_text", "yaml_problem"]

MAX_BYTES = 1 << 20  # a recipe is a few hundred bytes; a run's config.yaml a few kilobytes
MAX_NODES = 100_000  # values once aliases are expanded (a full config has about 200)
MAX_DEPTH = 64
_MERGE = "tag:yaml.org,2002:merge"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: ``line 2, column 1: expected ',' or ']' ...``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def read_text(path: str | Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a small file; too large or not UTF-8 is a :class:`UserError`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise UserError(f"{what} {str(path)!r} is larger than {max_bytes} bytes; that is not a "
                        "recipe (wrong file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                        f"line {line}, column {column}); save it as UTF-8") from exc


def _key_name(node: Node) -> str:
    return str(node.value) if isinstance(node, ScalarNode) else f"<{node.tag.rsplit(':', 1)[-1]}>"


def _check(root: Node, source: str) -> None:
    """Expanded size, depth and duplicate keys of a composed document (iteratively)."""
    todo: list[tuple[Node, int, str]] = [(root, 0, "")]
    count = 0
    while todo:
        node, depth, path = todo.pop()
        count += 1
        if count > MAX_NODES:
            raise UserError(f"{source}: its aliases (*name) expand to more than {MAX_NODES} values "
                            "(an alias bomb, or an alias inside its own anchor); write the values "
                            "out or use fewer aliases")
        if depth > MAX_DEPTH:
            raise UserError(f"{source}: values nest deeper than {MAX_DEPTH} levels (at "
                            f"{path or 'the top'!r}); a recipe is a few levels deep")
        if isinstance(node, SequenceNode):
            todo.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            lines: dict[tuple[str, Any], int] = {}
            for key, value in node.value:
                name = f"{path}.{_key_name(key)}" if path else _key_name(key)
                if isinstance(key, ScalarNode) and key.tag != _MERGE:
                    line = key.start_mark.line + 1
                    if (key.tag, key.value) in lines:
                        first = lines[(key.tag, key.value)]
                        where = f"lines {first} and {line}" if first != line else f"both on line {line}"
                        raise UserError(f"{source}: key {name!r} appears twice ({where}); keep one")
                    lines[(key.tag, key.value)] = line
                todo.append((key, depth + 1, name))
                todo.append((value, depth + 1, name))


class _TooDeep(yaml.YAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader whose scanner refuses nesting beyond ``MAX_DEPTH`` before anything recurses."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep(f"line {self.get_mark().line + 1}: values nest deeper than {MAX_DEPTH} levels")
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_DEPTH:
            raise _TooDeep(f"line {self.get_mark().line + 1}: values nest deeper than {MAX_DEPTH} levels")
        return super().add_indent(column)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document with the bounds of the module docstring.

    ``source`` names the input in errors, e.g. ``"config file 'a.yaml'"``.
    """
    if len(text) > MAX_BYTES:
        raise UserError(f"{source} is larger than {MAX_BYTES} characters; that is not a recipe")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, source)
        return loader.construct_document(node)
    except _TooDeep as exc:
        raise UserError(f"{source}: {exc}; a recipe is a few levels deep") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{source} is not valid YAML: {yaml_problem(exc)}") from exc
    except RecursionError as exc:
        raise UserError(f"{source}: values nest too deeply to read; a recipe is a few levels "
                        "deep") from exc
    finally:
        loader.dispose()
