#!/usr/bin/env python3
"""Checks that the SDK's Python files stay within Python 3.9 (pyproject.toml's
requires-python), with the interpreter at hand (Debian 12 has only 3.11).
ctest python_sdk_py39 runs it over sdk/python/paddock and examples/python:

    python3 sdk/python/check_py39.py [FILE_OR_DIR ...]

Two passes per file:
1. syntax: ``ast.parse(..., feature_version=(3, 9))`` (match statements, except*, ...);
2. names and calls the 3.9 standard library lacks, and ``X | Y`` of types where it is
   evaluated at run time (PEP 604 unions need 3.10 outside of annotations, inside them
   too unless the module has ``from __future__ import annotations``, and always in class
   fields: dataclass tools resolve those with typing.get_type_hints()).
Pass 2 is a list of known cases, not a proof; a real 3.9 interpreter is the final word
(`python3.9 -m compileall` plus importing the package).
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Iterator, List, Optional, Set, Tuple

# module -> names added after 3.9 (3.10 and 3.11).
_NEW_NAMES = {
    "typing": {"TypeAlias", "ParamSpec", "ParamSpecArgs", "ParamSpecKwargs", "Concatenate",
               "TypeGuard", "is_typeddict", "Self", "LiteralString", "Never", "assert_never",
               "assert_type", "reveal_type", "Required", "NotRequired", "Unpack", "TypeVarTuple",
               "dataclass_transform", "get_overloads", "clear_overloads", "override", "TypeIs"},
    "types": {"NoneType", "UnionType", "EllipsisType", "NotImplementedType"},
    "itertools": {"pairwise", "batched"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Timeout", "Barrier"},
    "contextlib": {"aclosing", "chdir"},
    "enum": {"StrEnum", "ReprEnum", "verify", "member", "nonmember", "global_enum", "EnumCheck",
             "FlagBoundary", "property"},
    "datetime": {"UTC"},
    "inspect": {"get_annotations", "markcoroutinefunction"},
    "hashlib": {"file_digest"},
    "operator": {"call"},
    "math": {"cbrt", "exp2"},
    "dataclasses": {"KW_ONLY"},
}
_NEW_MODULES = {"tomllib", "wsgiref.types"}
_NEW_BUILTINS = {"aiter", "anext", "ExceptionGroup", "BaseExceptionGroup", "EncodingWarning"}
_NEW_METHODS = {"bit_count", "add_note"}  # int.bit_count (3.10), BaseException.add_note (3.11)
# call name -> keyword arguments added after 3.9
_NEW_KWARGS = {
    "zip": {"strict"},
    "dataclass": {"slots", "kw_only", "match_args", "weakref_slot"},
    "field": {"kw_only"},
    "make_dataclass": {"slots", "kw_only", "match_args", "weakref_slot"},
}
_TYPE_NAMES = {"int", "str", "bytes", "float", "bool", "list", "dict", "tuple", "set", "frozenset",
               "type", "object", "complex", "bytearray", "memoryview"}


def _files(paths: List[str]) -> Iterator[str]:
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for n in sorted(names):
                    if n.endswith(".py"):
                        yield os.path.join(root, n)
        else:
            yield p


def _call_name(f: ast.expr) -> Optional[str]:
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def _looks_like_type(e: ast.expr) -> bool:
    if isinstance(e, ast.Constant) and e.value is None:
        return True
    if isinstance(e, ast.Name):
        return e.id in _TYPE_NAMES or e.id[:1].isupper()
    if isinstance(e, ast.Attribute):
        return e.attr[:1].isupper()
    if isinstance(e, ast.Subscript):
        return _looks_like_type(e.value)
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.BitOr):
        return _looks_like_type(e.left) or _looks_like_type(e.right)
    return False


def _annotation_nodes(tree: ast.AST) -> Tuple[Set[int], Set[int]]:
    """ids of every node inside an annotation, and of those inside a class body's field
    annotations (dataclass fields: typing.get_type_hints() evaluates them, as dataclass
    tools and OmegaConf's structured configs do, also under ``from __future__ import
    annotations``)."""
    out: Set[int] = set()
    fields: Set[int] = set()
    for node in ast.walk(tree):
        anns: List[Optional[ast.expr]] = []
        if isinstance(node, ast.arg):
            anns.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            anns.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign):
                    fields.update(id(n) for n in ast.walk(stmt.annotation))
        for a in anns:
            if a is not None:
                out.update(id(n) for n in ast.walk(a))
    return out, fields


def check_source(src: str, path: str) -> List[Tuple[int, str]]:
    """(line, problem) for everything in ``src`` that needs Python > 3.9."""
    try:
        tree = ast.parse(src, path, feature_version=(3, 9))
    except SyntaxError as e:
        return [(e.lineno or 0, f"not Python 3.9 syntax: {e.msg}")]
    problems: List[Tuple[int, str]] = []
    future_annotations = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body)
    in_annotation, in_field = _annotation_nodes(tree)
    aliases = {}  # local name -> module, for `import typing as t`
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
                if a.name in _NEW_MODULES:
                    problems.append((line, f"module {a.name} is new in Python 3.11"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in _NEW_MODULES:
                problems.append((line, f"module {node.module} is new in Python 3.11"))
            for a in node.names:
                if a.name in _NEW_NAMES.get(node.module, ()):
                    problems.append((line, f"{node.module}.{a.name} is not in Python 3.9"))
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name):
                mod = aliases.get(node.value.id, node.value.id)
                if node.attr in _NEW_NAMES.get(mod, ()):
                    problems.append((line, f"{mod}.{node.attr} is not in Python 3.9"))
            if node.attr in _NEW_METHODS:
                problems.append((line, f".{node.attr}() is not in Python 3.9"))
        elif isinstance(node, ast.Name) and node.id in _NEW_BUILTINS and isinstance(node.ctx, ast.Load):
            problems.append((line, f"builtin {node.id} is not in Python 3.9"))
        elif isinstance(node, ast.Call):
            name = _call_name(node.func)
            for kw in node.keywords:
                if kw.arg and kw.arg in _NEW_KWARGS.get(name or "", ()):
                    problems.append((line, f"{name}({kw.arg}=...) is not in Python 3.9"))
            if name in ("isinstance", "issubclass") and len(node.args) == 2:
                if isinstance(node.args[1], ast.BinOp) and isinstance(node.args[1].op, ast.BitOr):
                    problems.append((line, f"{name}(x, A | B) needs Python 3.10; use a tuple"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            if id(node) in in_annotation and future_annotations and id(node) not in in_field:
                continue
            if _looks_like_type(node.left) and _looks_like_type(node.right):
                if id(node) in in_field:
                    where = "a class field annotation (typing.get_type_hints evaluates it)"
                elif id(node) in in_annotation:
                    where = "an annotation without `from __future__ import annotations`"
                else:
                    where = "an expression evaluated at run time"
                problems.append((line, f"`X | Y` union in {where} needs Python 3.10; use Optional/Union"))
    return sorted(set(problems))


def main(argv: List[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    paths = argv or [os.path.join(here, "paddock"), os.path.join(here, "..", "..", "examples", "python")]
    n = 0
    bad = 0
    for path in _files(paths):
        n += 1
        with open(path, encoding="utf-8") as f:
            src = f.read()
        for line, problem in check_source(src, path):
            bad += 1
            print(f"{os.path.normpath(path)}:{line}: {problem}")
    if n == 0:
        print("check_py39: no Python files found", file=sys.stderr)
        return 1
    if bad:
        print(f"check_py39: {bad} problem(s) in {n} files: the SDK must run on Python 3.9 "
              "(pyproject.toml requires-python)", file=sys.stderr)
        return 1
    print(f"check_py39: {n} files fit Python 3.9")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
