"""Reads mmcv / mmsegmentation `.py` configs WITHOUT executing them.

Such a config is a list of assignments of literals: `model = dict(type="EncoderDecoder", backbone=dict(...))`,
`crop_size = (512, 512)`, `norm_cfg = dict(type="SyncBN", requires_grad=True)` reused later by name, arithmetic on
numbers (`lr = 0.01 * 2`), lists joined with `+`, f-strings of such values, and `_base_ = [...]` files merged underneath
(mmcv's rule: dicts merge key by key, `_delete_=True` replaces, everything else is replaced).

The text is parsed with `ast` and only those forms are evaluated, by this module's own walker. Anything else (an
import, an attribute access, a call of anything but `dict` / `list` / `tuple` / `set`, a lambda, a comprehension,
subscripts of unknown objects, ...) is a `ConfigSyntaxError` naming the file and line. Nothing in the file can run code.
"""

from __future__ import annotations

import ast
import copy
import operator
import os
from pathlib import Path

# Bounds that keep a hostile file from exhausting memory through arithmetic (`"a" * 10**12`, `9 ** 9 ** 9`).
_MAX_SEQUENCE_LENGTH = 100_000
_MAX_EXPONENT = 64
_MAX_BASE_DEPTH = 16

_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CONSTRUCTORS = {"dict", "list", "tuple", "set"}
_NAMED_CONSTANTS = {"True": True, "False": False, "None": None}


class ConfigSyntaxError(ValueError):
    """The config holds something that is not a plain data assignment (the message names the file and line)."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float, complex))  # bool is an int


class _Reader:
    def __init__(self, filename: str, namespace: dict):
        self.filename = filename
        self.namespace = namespace

    def error(self, node: ast.AST, message: str) -> ConfigSyntaxError:
        line = getattr(node, "lineno", "?")
        return ConfigSyntaxError(f"{self.filename}:{line}: {message} (configs are read as data, never executed).")

    def value(self, node: ast.AST):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (str, bytes, int, float, complex, bool)) or node.value is None:
                return node.value
            raise self.error(node, f"unsupported constant {node.value!r}")
        if isinstance(node, ast.Name):
            if node.id in self.namespace:
                return copy.deepcopy(self.namespace[node.id])
            if node.id in _NAMED_CONSTANTS:
                return _NAMED_CONSTANTS[node.id]
            raise self.error(node, f"name {node.id!r} is not assigned earlier in the config")
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    items.extend(self._iterable(element.value))
                else:
                    items.append(self.value(element))
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            result = {}
            for key, value in zip(node.keys, node.values):
                if key is None:  # {**other}
                    other = self.value(value)
                    if not isinstance(other, dict):
                        raise self.error(value, "`**` in a dict needs a dict")
                    result.update(other)
                else:
                    result[self._hashable(key)] = self.value(value)
            return result
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPERATORS:
            operand = self.value(node.operand)
            if isinstance(node.op, ast.Not) or _is_number(operand):
                return _UNARY_OPERATORS[type(node.op)](operand)
            raise self.error(node, "unary operators apply to numbers only")
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        if isinstance(node, ast.JoinedStr):
            return self._f_string(node)
        if isinstance(node, ast.Attribute):
            raise self.error(node, f"attribute access `.{node.attr}` is not allowed")
        raise self.error(node, f"`{type(node).__name__}` expressions are not allowed")

    def _hashable(self, node: ast.AST):
        key = self.value(node)
        if not isinstance(key, (str, bytes, int, float, bool, tuple)) and key is not None:
            raise self.error(node, f"dict keys must be literals, got {type(key).__name__}")
        return key

    def _iterable(self, node: ast.AST):
        value = self.value(node)
        if not isinstance(value, (list, tuple, set, str)):
            raise self.error(node, "`*` unpacking needs a list or tuple")
        return value

    def _call(self, node: ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _CONSTRUCTORS:
            what = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise self.error(node, f"calling {what!r} is not allowed; only dict(...), list(...), tuple(...), set(...)")
        name = node.func.id
        if name == "dict":
            result = {}
            for argument in node.args:
                base = self.value(argument)
                if not isinstance(base, dict):
                    raise self.error(argument, "dict(...) takes keyword arguments or another dict")
                result.update(base)
            for keyword in node.keywords:
                if keyword.arg is None:
                    other = self.value(keyword.value)
                    if not isinstance(other, dict):
                        raise self.error(keyword.value, "`**` in dict(...) needs a dict")
                    result.update(other)
                else:
                    result[keyword.arg] = self.value(keyword.value)
            return result
        if node.keywords or len(node.args) > 1:
            raise self.error(node, f"{name}(...) takes at most one positional argument")
        items = self._iterable(node.args[0]) if node.args else ()
        return {"list": list, "tuple": tuple, "set": set}[name](items)

    def _binary(self, node: ast.BinOp):
        if type(node.op) not in _BINARY_OPERATORS:
            raise self.error(node, f"operator {type(node.op).__name__} is not allowed")
        left, right = self.value(node.left), self.value(node.right)
        numbers = _is_number(left) and _is_number(right)
        if isinstance(node.op, ast.Pow):
            if not numbers or abs(right) > _MAX_EXPONENT:
                raise self.error(node, f"`**` is allowed on numbers with exponents up to {_MAX_EXPONENT}")
        elif isinstance(node.op, ast.Mult) and not numbers:
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            if not isinstance(sequence, (str, list, tuple)) or not isinstance(count, int) or isinstance(count, bool):
                raise self.error(node, "`*` is allowed on numbers, or a string / list / tuple times an int")
            if len(sequence) * max(count, 0) > _MAX_SEQUENCE_LENGTH:
                raise self.error(node, f"`*` would build a sequence longer than {_MAX_SEQUENCE_LENGTH}")
        elif isinstance(node.op, ast.Add) and not numbers:
            if type(left) is not type(right) or not isinstance(left, (str, list, tuple)):
                raise self.error(node, "`+` is allowed on numbers, or two strings / lists / tuples")
        elif isinstance(node.op, ast.Mod) and isinstance(left, str):
            raise self.error(node, "%-formatting is not allowed; write the string literally")
        elif not numbers:
            raise self.error(node, f"operator {type(node.op).__name__} is allowed on numbers only")
        try:
            return _BINARY_OPERATORS[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as error:
            raise self.error(node, f"arithmetic failed: {error}") from None

    def _subscript(self, node: ast.Subscript):
        container = self.value(node.value)
        if not isinstance(container, (list, tuple, dict, str)):
            raise self.error(node, "subscripts apply to lists, tuples, dicts and strings only")
        if isinstance(node.slice, ast.Slice):
            bounds = [self.value(part) if part is not None else None
                      for part in (node.slice.lower, node.slice.upper, node.slice.step)]
            if any(bound is not None and not isinstance(bound, int) for bound in bounds):
                raise self.error(node, "slice bounds must be integers")
            return container[slice(*bounds)]
        index = self._hashable(node.slice)
        try:
            return container[index]
        except (IndexError, KeyError, TypeError) as error:
            raise self.error(node, f"bad subscript {index!r}: {error}") from None

    def _f_string(self, node: ast.JoinedStr) -> str:
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif isinstance(part, ast.FormattedValue) and part.conversion == -1 and part.format_spec is None:
                value = self.value(part.value)
                if not isinstance(value, (str, int, float, bool)):
                    raise self.error(part, "f-string fields must be strings or numbers")
                parts.append(str(value))
            else:
                raise self.error(part, "f-strings with conversions or format specs are not allowed")
        return "".join(parts)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring
        if isinstance(node, ast.Pass):
            return
        if isinstance(node, ast.Assign):
            value = self.value(node.value)
            for target in node.targets:
                self._assign(target, value)
            return
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            self._assign(node.target, self.value(node.value))
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            raise self.error(node, "imports are not allowed")
        raise self.error(node, f"`{type(node).__name__}` statements are not allowed; only `name = value` assignments")

    def _assign(self, target: ast.AST, value) -> None:
        if isinstance(target, ast.Name):
            if target.id.startswith("__"):
                raise self.error(target, f"dunder names such as {target.id!r} are not allowed")
            self.namespace[target.id] = value
            return
        if isinstance(target, (ast.Tuple, ast.List)) and all(isinstance(t, ast.Name) for t in target.elts):
            if not isinstance(value, (list, tuple)) or len(value) != len(target.elts):
                raise self.error(target, "cannot unpack the value into the names")
            for name, item in zip(target.elts, value):
                self._assign(name, item)
            return
        raise self.error(target, "only plain names can be assigned")


def merge_config(base: dict, child: dict) -> dict:
    """mmcv's `_base_` merge: dicts merge recursively unless the child's dict says `_delete_=True`; other values
    replace the base's."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            if value.pop("_delete_", False) or not isinstance(merged.get(key), dict):
                merged[key] = _strip_delete(value)
            else:
                merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _strip_delete(value):
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    return value


def parse_python_config(text: str, filename: str = "<config>", base_dir: str | os.PathLike | None = None,
                        _depth: int = 0) -> dict:
    """Parses the text of an mmcv-style `.py` config into a dict, without executing it.

    Args:
        text: the config's source.
        filename: named in error messages.
        base_dir: folder that `_base_` paths are relative to; `None` (e.g. a config embedded in a checkpoint) makes
            `_base_` an error.

    Raises:
        `ConfigSyntaxError` naming the file and line of anything that is not plain data.
    """
    if _depth > _MAX_BASE_DEPTH:
        raise ConfigSyntaxError(f"{filename}: `_base_` files nest deeper than {_MAX_BASE_DEPTH} levels (a cycle?).")
    try:
        tree = ast.parse(text, filename=filename, mode="exec")
    except SyntaxError as error:
        raise ConfigSyntaxError(f"{filename}:{error.lineno}: not valid Python syntax: {error.msg}") from None
    namespace: dict = {}
    reader = _Reader(filename, namespace)
    for node in tree.body:
        reader.statement(node)
    bases = namespace.pop("_base_", None)
    if bases is None:
        return namespace
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigSyntaxError(f"{filename}: `_base_` must be a path or a list of paths, got {bases!r}.")
    if base_dir is None:
        raise ConfigSyntaxError(
            f"{filename}: `_base_` files cannot be resolved for a config that is not read from a file; pass the "
            "flattened config (mmcv's `Config.dump`)."
        )
    merged: dict = {}
    for base in bases:
        path = (Path(base_dir) / base).resolve()
        if path.suffix != ".py" or not path.is_file():
            raise ConfigSyntaxError(f"{filename}: `_base_` file {base!r} not found (looked for {str(path)!r}).")
        merged = merge_config(merged, parse_python_config(path.read_text(), str(path), path.parent, _depth + 1))
    return merge_config(merged, namespace)


__all__ = ["ConfigSyntaxError", "merge_config", "parse_python_config"]
