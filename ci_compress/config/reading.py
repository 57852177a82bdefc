"""Reading a config's YAML as a hostile file.

A config comes with a pull request: it is reviewed as text, and what is reviewed must be
what is read. ``yaml.safe_load`` already refuses Python tags; this reader also refuses

* **duplicate keys**: YAML says a mapping's keys are unique, PyYAML keeps the last one,
  so a second ``thresholds:`` below the reviewed one silently replaces it;
* **alias bombs**: anchors and aliases (``&a`` / ``*a``) share one node, so a small file
  can stand for an exponential tree ("billion laughs": 877 bytes, 10^9 values); every
  later step that walks the tree (interpolation, validation) would copy it. The size of
  the tree as it expands is counted on the composed node graph, sharing counted as many
  times as it is used, before anything is built from it.

Merge keys (``<<: *defaults``) and ordinary anchors keep working within the limit.
"""

from __future__ import annotations

from typing import Any

import yaml

from ci_compress.errors import ConfigError

MAX_EXPANDED_NODES = 100_000
"""A config expands to a few hundred values; a hundred thousand is far past any real one."""


def _where(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _expanded_size(root: yaml.Node, name: str) -> int:
    """Values in the tree once every alias is expanded (memoised per node: linear time)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if not ready:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes[id(c)] for c in children)
        if total > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"{name}: {_where(node)}: the YAML expands to more than "
                f"{MAX_EXPANDED_NODES:,} values through anchors and aliases; refused "
                "(an alias bomb)",
                hint="write the config out without nested aliases",
            )
        sizes[id(node)] = total
    return sizes[id(root)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    origin = "<config>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
            if first is not None:
                raise ConfigError(
                    f"{self.origin}: {_where(key_node)}: key {key!r} is given twice in one "
                    f"mapping (first at {_where(first)}); YAML keeps only the last, so the "
                    "first would be silently ignored",
                    hint=f"keep one {key!r} and merge the two",
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, *, origin: str) -> Any:
    """Parse a config's YAML text: safe tags only, unique keys, no alias bombs.

    YAML syntax errors are :class:`yaml.YAMLError` for the caller to report.
    """
    loader = _UniqueKeyLoader(text)
    loader.origin = origin
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_size(root, origin)
        return loader.construct_document(root)
    finally:
        loader.dispose()
