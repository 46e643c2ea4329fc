"""Safe, bounded reading of the official HyperPyYAML: tags are data, `!ref` arithmetic is numbers only.

A model yaml is a few kilobytes and a few hundred nodes. A hostile one can make a plain reader expand aliases or
`!ref` chains exponentially (a 500-byte "billion laughs" document) or multiply a string into gigabytes, so every
way the document can grow has a limit, and each refusal names the yaml and the limit.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ModelFolderError

# The official cosyvoice3.yaml is ~8 KB with a few hundred nodes; these limits leave two orders of magnitude.
MAX_YAML_BYTES = 1 << 20
MAX_NODES = 100_000          # nodes after expanding aliases, merge keys and `!ref` references
MAX_REF_DEPTH = 20           # a `!ref` naming a `!ref` naming ...
MAX_REF_CHARS = 256          # one `!ref` expression
MAX_MAGNITUDE = 1e15         # any number an expression reads or produces


class YamlLimitError(ValueError):
    """The document exceeds one of the reader's bounds."""


class _Tagged(dict):
    """A `!new:` / `!name:` / `!apply:` node kept as data; the class is never imported."""

    def __init__(self, kind: str, target: str, args: Any):
        super().__init__(args if isinstance(args, dict) else {})
        self.kind = kind
        self.target = target
        self.positional = args if isinstance(args, list) else []


class _Ref(str):
    """A `!ref <a> * <b>` expression, resolved after the whole document is read."""


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document holds once every alias (and merge key) is copied out, counted without copying."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_NODES:
                raise YamlLimitError(f"the yaml expands to more than {MAX_NODES} nodes (aliases repeat content); "
                                     "a model yaml has a few hundred")
            sizes[id(node)] = total
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _SafeHyperLoader(yaml.SafeLoader):
    def construct_document(self, node):
        _expanded_size(node)  # refuse an alias bomb before PyYAML's merge-key flattening copies it out
        return super().construct_document(node)


def _construct_tagged(loader, tag_suffix, node):
    kind, _, target = tag_suffix.partition(":")
    if isinstance(node, yaml.MappingNode):
        args = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        args = {}
    return _Tagged(kind, target, args)


def _construct_ref(loader, node):
    return _Ref(loader.construct_scalar(node))


for _kind in ("new", "name", "apply"):
    _SafeHyperLoader.add_multi_constructor(
        f"!{_kind}:", lambda loader, suffix, node, _k=_kind: _construct_tagged(loader, f"{_k}:{suffix}", node)
    )
_SafeHyperLoader.add_constructor("!ref", _construct_ref)
# Tags we do not understand are kept as plain data rather than executed.
_SafeHyperLoader.add_multi_constructor("!", lambda loader, suffix, node: None)

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


def _number(value: Any, expr: str) -> int | float:
    """An operand or result of `!ref` arithmetic: a finite number of bounded size (never a string or list,
    whose `*` would repeat it without limit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"!ref {expr!r}: arithmetic on {type(value).__name__} values is not supported "
                         "(numbers only)")
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise YamlLimitError(f"!ref {expr!r}: number out of range (|x| > {MAX_MAGNITUDE:g})")
    return value


def _eval_arith(expr: str) -> Any:
    """Evaluates `+ - * / // %` over bounded numbers; anything else is rejected, never executed."""

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return _number(n.value, expr)
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            left, right = ev(n.left), ev(n.right)
            try:
                return _number(_BINOPS[type(n.op)](left, right), expr)
            except ZeroDivisionError as exc:
                raise ValueError(f"!ref {expr!r}: division by zero") from exc
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"!ref {expr!r}: unsupported expression (only + - * / // % on numbers)")

    if len(expr) > MAX_REF_CHARS:
        raise YamlLimitError(f"!ref expression longer than {MAX_REF_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"!ref {expr!r}: not an expression") from exc
    return ev(tree)


class _Resolver:
    """Replaces every `!ref` by its value, counting the nodes it produces so repeated references stay bounded."""

    def __init__(self, root: dict):
        self.root = root
        self.nodes = 0

    def resolve(self, node: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlLimitError(f"the yaml expands to more than {MAX_NODES} nodes (!ref repeats content); "
                                 "a model yaml has a few hundred")
        if depth > MAX_REF_DEPTH:
            raise YamlLimitError(f"!ref nesting deeper than {MAX_REF_DEPTH} (or a reference cycle)")
        if isinstance(node, _Ref):
            if len(node) > MAX_REF_CHARS:
                raise YamlLimitError(f"!ref expression longer than {MAX_REF_CHARS} characters")
            names = re.findall(r"<([^<>]+)>", node)
            if len(names) == 1 and node.strip() == f"<{names[0]}>":
                return self.resolve(self.lookup(names[0]), depth + 1)
            expr = node
            for name in names:
                value = _number(self.resolve(self.lookup(name), depth + 1), node)
                expr = expr.replace(f"<{name}>", repr(value))
            return _eval_arith(expr)
        if isinstance(node, _Tagged):
            out = _Tagged(node.kind, node.target, {})
            for k, v in node.items():
                out[k] = self.resolve(v, depth)
            out.positional = [self.resolve(v, depth) for v in node.positional]
            return out
        if isinstance(node, dict):
            return {k: self.resolve(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v, depth) for v in node]
        return node

    def lookup(self, dotted: str) -> Any:
        cur: Any = self.root
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise ValueError(f"!ref <{dotted}> names nothing in the yaml")
            cur = cur[part]
        return cur


def read_hyperparams(path: Path) -> dict:
    """Reads a HyperPyYAML file as plain data: tags are recorded, no code is imported or run."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ModelFolderError(f"{path}: cannot read the model yaml ({exc})") from exc
    if len(data) > MAX_YAML_BYTES:
        raise ModelFolderError(f"{path}: the model yaml is larger than {MAX_YAML_BYTES >> 10} KB "
                               "(limit hit; the official one is ~8 KB)")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=_SafeHyperLoader)  # noqa: S506 - derives from SafeLoader
        if not isinstance(raw, dict):
            raise ModelFolderError(f"{path}: expected a mapping at the top level of the yaml")
        return _Resolver(raw).resolve(raw)
    except YamlLimitError as exc:
        raise ModelFolderError(f"{path}: limit hit: {exc}") from exc
    except RecursionError as exc:
        raise ModelFolderError(f"{path}: limit hit: the yaml is nested too deeply") from exc
    except (UnicodeDecodeError, yaml.YAMLError, ValueError, TypeError) as exc:
        # ValueError also covers PyYAML's int() of an over-long number literal.
        raise ModelFolderError(f"{path}: cannot read the model yaml ({exc})") from exc
