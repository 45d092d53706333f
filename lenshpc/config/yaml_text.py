"""A config file's YAML text to plain data: syntax errors and keys given twice refused in
one line naming the key's path and the lines; :class:`UserError`, the one-line error of
every user mistake (exit status 2), lives here, at the bottom of the config package."""

from __future__ import annotations

from typing import Any

import yaml


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


def parse_yaml(text: str, source: str = "<config>") -> Any:
    """Parse YAML text of a config; a key given twice in one mapping is refused.

    Plain YAML keeps the last of duplicate keys silently (a second ``seed:`` or
    ``image:`` would replace the first). The error names the key's path and both
    lines. Syntax errors are reported as UserError with their line and column."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _refuse_duplicate_keys(root, "", source, set())
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"config file {source} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise UserError(f"config file {source} is nested too deeply to be a config") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of 5000 digits, a bad date
        problem = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"config file {source} holds a value YAML cannot read: {problem}") from None


def _key_value(node: yaml.Node) -> Any:
    """The value a scalar mapping key stands for (``1`` and ``0x1`` are the same key)."""
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except (yaml.YAMLError, TypeError, ValueError):
        return (node.tag, node.value)


def _refuse_duplicate_keys(node: yaml.Node, path: str, source: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: walked once already (and YAML may be recursive)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            sub = path or "(top level)"
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = _key_value(key_node)   # `<<: *base` merge keys may be overridden
                sub = f"{path}.{key}" if path else str(key)
                line = key_node.start_mark.line + 1
                try:
                    duplicate = key in first_line
                    earlier = first_line.setdefault(key, line)
                except TypeError:   # an unhashable key: build() refuses it later
                    duplicate = False
                if duplicate:
                    lines = f"both on line {line}" if earlier == line else \
                        f"at lines {earlier} and {line}"
                    raise UserError(f"config {sub}: given twice in {source}, {lines}; "
                                    f"give each key once")
            _refuse_duplicate_keys(value_node, sub, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{i}]", source, seen)
