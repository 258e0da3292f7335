"""Reading the documents users hand us (stack files, config.json, policy config, stack outputs) as data.

Every reader here is bounded and strict, because a document is input and input may be careless or hostile:

* size: at most ``MAX_DOCUMENT_BYTES``, read from a regular file only (``/dev/zero`` is refused, not read
  until memory runs out);
* text: UTF-8, or a clear error (binary garbage is not parsed);
* shape: nesting at most ``MAX_NESTING`` deep, and at most ``MAX_NODES`` values once YAML aliases are
  expanded (an alias bomb is refused before anything walks it);
* keys: a key given twice in one mapping is an error naming both lines (YAML) or the key (JSON): silently
  letting the last one win gives a plan for another model than the one the user reads;
* numbers: no NaN or infinity.

Each failure is an InputError naming the flag or file and the reason, never a traceback.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any

import yaml

from gpuinfra.errors import InputError, Problem

MAX_DOCUMENT_BYTES = 1 << 20
MAX_NESTING = 64
MAX_NODES = 100_000


def read_text(path: str | Path, label: str, *, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most LIMIT bytes; LABEL names it in errors."""
    file = Path(path)

    def refuse(reason: str) -> InputError:
        return InputError([Problem(label, f"{file}: {reason}")])

    try:
        info = file.stat()
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse("is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise refuse("is not a regular file")
    try:
        with file.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise refuse(f"is larger than {limit // 1024} KiB; this is not a document gpuinfra reads")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"is not UTF-8 text (byte {exc.start}); is it a binary file?") from None
    if "\x00" in text:
        raise refuse("holds NUL bytes; is it a binary file?")
    return text


# --- YAML -------------------------------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_NESTING while composing (before Python's own
    recursion limit turns it into a crash), and reads only plain data: text, numbers, booleans, null, lists
    and mappings. Dates stay text (`2024-13-45` is no crash, `2026-01-01` no datetime), and the binary,
    timestamp, set and ordered-map tags are refused."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_PLAIN_DATA_TAGS = {f"tag:yaml.org,2002:{name}"
                    for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _PLAIN_DATA_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag in ("binary", "timestamp", "set", "omap", "pairs"):
    _BoundedLoader.yaml_constructors.pop(f"tag:yaml.org,2002:{_tag}", None)
_BoundedLoader.yaml_constructors = {**_BoundedLoader.yaml_constructors}


class _Recursive(Exception):
    pass


def _expanded_size(node: yaml.Node, memo: dict[int, int], visiting: frozenset[int] = frozenset()) -> int:
    """How many values NODE holds once every alias is expanded (aliases share node objects: memoised); an
    alias inside its own anchor (`&a [*a]`) is infinite and refused."""
    known = memo.get(id(node))
    if known is not None:
        return known
    if id(node) in visiting:
        raise _Recursive
    inner = visiting | {id(node)}
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, inner) + _expanded_size(v, memo, inner) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, memo, inner) for item in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> list[Problem]:
    """Every key given twice in one mapping, with both lines, anywhere under NODE."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            child = f"{path}.{name}" if path else name
            if key.tag not in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"):
                problems.append(Problem(child, f"keys must be text, not {key.tag.rsplit(':', 1)[-1]} (line "
                                               f"{key.start_mark.line + 1}); quote it"))
                continue
            if isinstance(key, yaml.ScalarNode) and name != "<<":
                line = key.start_mark.line + 1
                if name in lines:
                    problems.append(Problem(child, f"is given twice (lines {lines[name]} and {line}); remove one: "
                                                   "the last would silently win"))
                else:
                    lines[name] = line
            problems += _duplicate_keys(value, child, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}.{index}" if path else str(index), seen)
    return problems


def parse_yaml(text: str, label: str) -> Any:
    """TEXT as plain data (safe tags only), refusing duplicate keys, deep nesting, alias bombs, NaN/inf."""
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here already
    except yaml.YAMLError as exc:
        raise InputError([Problem(label, f"not valid YAML: {_yaml_reason(exc)}")]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            too_big = _expanded_size(node, {}) > MAX_NODES
        except _Recursive:
            raise InputError([Problem(label, "holds an alias inside its own anchor (infinite); refused")]) from None
        if too_big:
            raise InputError([Problem(label, f"expands to more than {MAX_NODES:,} values (YAML aliases?); "
                                             "refused")])
        duplicates = _duplicate_keys(node, "", set())
        if duplicates:
            raise InputError([Problem(f"{label}: {p.path}", p.reason) for p in duplicates])
        data = loader.construct_document(node)
    except _TooDeep as exc:
        raise InputError([Problem(label, f"nests deeper than {MAX_NESTING} levels{_where(exc.args[0])}; "
                                         "refused")]) from None
    except InputError:
        raise
    except yaml.YAMLError as exc:
        raise InputError([Problem(label, f"not valid YAML: {_yaml_reason(exc)}")]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # e.g. `!!int abc`, a 5,000-digit int
        raise InputError([Problem(label, f"not valid YAML: a value cannot be read ({exc})")]) from None
    finally:
        loader.dispose()
    bad = _non_finite_paths(data, "")
    if bad:
        raise InputError([Problem(f"{label}: {path}" if path else label, "must be a finite number, not NaN or "
                                                                          "infinity") for path in bad])
    return data


def _where(mark) -> str:  # noqa: ANN001 - a yaml Mark
    return f" (line {mark.line + 1})" if mark is not None else ""


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem}{_where(mark)}" if mark is not None else str(problem)


def _non_finite_paths(data: Any, path: str) -> list[str]:
    if isinstance(data, float) and not math.isfinite(data):
        return [path]
    if isinstance(data, dict):
        return [p for key, value in data.items() for p in _non_finite_paths(value, f"{path}.{key}" if path else
                                                                              str(key))]
    if isinstance(data, list):
        return [p for index, value in enumerate(data)
                for p in _non_finite_paths(value, f"{path}.{index}" if path else str(index))]
    return []


def load_yaml(path: str | Path, label: str) -> Any:
    return parse_yaml(read_text(path, label), label)


# --- JSON -------------------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def parse_json(text: str, label: str) -> Any:
    """TEXT as JSON, refusing duplicate keys, NaN/Infinity and nesting deeper than MAX_NESTING."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=_refuse_constant,
                          parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise InputError([Problem(label, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")]
                         ) from None
    except ValueError as exc:
        raise InputError([Problem(label, f"not valid JSON: {exc}")]) from None
    except RecursionError:
        raise InputError([Problem(label, f"nests deeper than {MAX_NESTING} levels; refused")]) from None
    if _depth(data) > MAX_NESTING:
        raise InputError([Problem(label, f"nests deeper than {MAX_NESTING} levels; refused")])
    if duplicates:
        raise InputError([Problem(label, f"key {key!r} is given twice in one object; remove one: the last would "
                                         "silently win") for key in dict.fromkeys(duplicates)])
    return data


def _depth(data: Any) -> int:
    """Nesting depth of DATA, counted without recursion (a deep document must not crash the counter)."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_NESTING:
                return deepest
            stack.extend((child, depth) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def load_json(path: str | Path, label: str) -> Any:
    return parse_json(read_text(path, label), label)


def load_json_object(path: str | Path, label: str) -> dict[str, Any]:
    data = load_json(path, label)
    if not isinstance(data, dict):
        raise InputError([Problem(label, f"{path} must hold a JSON object, got {kind_of(data)}")])
    return data


def kind_of(value: Any) -> str:
    """A user-facing name of VALUE's type ("a list", "a string"), for messages."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
