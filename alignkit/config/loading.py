"""YAML files and key=value overrides -> validated configs; errors that name the file, the line and the key;
the resolved config as YAML; the --help table; the walk over path fields that resolvers use."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .base import C, ConfigError, Section, deep_merge


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "data.packing=true"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f'override "{pair}" must look like key=value, e.g. train.lr=1e-4')
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'override "{pair}": "{part}" is set twice')
        node[parts[-1]] = _scalar(raw)
    return out


def _scalar(raw: str) -> Any:
    """A YAML value; also reads 1e-4 as a float (YAML 1.1 wants 1.0e-4, which surprises everyone)."""
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def read_yaml(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The mapping in a YAML file and its node tree (for line numbers in errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1} column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, ...), got {type(data).__name__}")
    return data, node


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Build a validated ``cls`` from an optional YAML file, an optional base dict and ``key=value`` overrides."""
    data, node = read_yaml(path) if path is not None else ({}, None)
    data = deep_merge(base or {}, data)
    data = deep_merge(data, parse_overrides(overrides or []))
    return validate(cls, data, source=str(path) if path else "<overrides>", node=node)


def validate(cls: type[C], data: dict[str, Any], source: str = "<config>", node: yaml.Node | None = None) -> C:
    """Validate a plain dict into ``cls``; pydantic's errors become one readable line each.

    The dict is laid over the recipe's own defaults first, so setting one key of a section keeps the recipe's
    defaults for the others (DPO's ``data.train`` stays ``demo:prefs`` when only ``data.max_length`` is given).
    """
    if isinstance(data, dict):
        data = deep_merge(cls.model_validate({}).model_dump(exclude_defaults=False), data)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(cls, err, source, node) for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def _describe(cls: type[Section], err: dict[str, Any], source: str, node: yaml.Node | None) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) if loc else "(top level)"
    line = _line_of(node, loc)
    where = f"{source} line {line}" if line else source
    if err["type"] == "extra_forbidden":
        renamed = RENAMED.get(".".join(p for p in loc if not p.isdigit()))
        if renamed:
            return f'{where}: key "{key}" was renamed to "{renamed}"'
        valid = _keys_at(cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f' (did you mean "{".".join(loc[:-1] + (close[0],))}"?)' if close else f" (valid keys here: {', '.join(valid)})"
        return f'{where}: unknown key "{key}"{hint}'
    if err["type"] == "value_error" and not loc:
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    return f'{where}: key "{key}" = {err.get("input")!r} is invalid: {err["msg"].removeprefix("Value error, ")}'


# old key -> its new name: a config written for an earlier version gets told, not "unknown key"
RENAMED = {"grpo.overlong_penalty": "grpo.missing_eos_penalty"}


def _keys_at(cls: type[Section], loc: tuple[str, ...]) -> list[str]:
    current: Any = cls
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _line_of(node: yaml.Node | None, loc: tuple[str, ...]) -> int | None:
    """1-based line of the deepest key of ``loc`` found in the YAML node tree."""
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def dump_config(cfg: Section) -> str:
    """The resolved config as YAML, every field present (what a run folder's config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# A path field's kind ("model", "data", "builtin"), in its Field's json_schema_extra: what a resolver maps it to.
Lookup = Any  # Callable[[kind, value], str | dict]: a replacement value, or a dict of updates for the whole section


def resolve_paths(cfg: C, lookup: Lookup, skip: frozenset[str] = frozenset(), prefix: str = "") -> C:
    """``cfg`` with every path field passed through ``lookup(kind, value)`` (nested sections, lists of sections
    and name -> path dicts included). The walk lives here, beside the fields that declare their kind; what names
    mean (``demo:`` assets, ``${stage.output}`` references) is the caller's: ``pipeline.resolve`` is the one
    resolver the commands use, so models, data and rewards only ever see real paths. A lookup may answer a dict:
    updates for the section holding the field, applied to the field itself and to fields left unset (None): a
    demo reward becomes a Python function source keeping its label, say. ``skip``: dotted keys the config does
    not read (``unread_paths``), left as they are: resolving them could build a demo model nobody uses."""
    updates: dict[str, Any] = {}
    skip = skip | frozenset(getattr(cfg, "unread_paths", ()))
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if f"{prefix}{name}" in skip:
            continue
        kind = (field.json_schema_extra or {}).get("resolve") if isinstance(field.json_schema_extra, dict) else None
        new = _resolve_value(value, kind, lookup, skip, f"{prefix}{name}.")
        if isinstance(new, dict) and isinstance(value, str | None):  # section updates: the field, and unset ones
            updates.update({k: v for k, v in new.items() if k == name or getattr(cfg, k) is None})
        elif new is not value:
            updates[name] = new
    return cfg.model_copy(update=updates) if updates else cfg


def _resolve_value(value: Any, kind: str | None, lookup: Lookup, skip: frozenset[str], prefix: str) -> Any:
    if isinstance(value, Section):
        return resolve_paths(value, lookup, skip, prefix)
    if isinstance(value, list):
        items = [_resolve_value(v, kind, lookup, skip, prefix) for v in value]
        return items if any(a is not b for a, b in zip(items, value)) else value
    if kind is None:
        return value
    if isinstance(value, dict):
        return {k: lookup(kind, v) if isinstance(v, str) else v for k, v in value.items()}
    if isinstance(value, str):
        new = lookup(kind, value)
        return value if new == value else new
    return value


def describe_fields(cls: type[Section], prefix: str = "", defaults: Section | None = None) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf field, in declaration order: the --help table.

    Defaults come from a default instance, so a recipe's own section defaults (DPO's lr, say) are the ones shown.
    """
    defaults = defaults if defaults is not None else cls.model_validate({})
    rows = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(defaults, name)
        if isinstance(value, Section):
            rows.extend(describe_fields(type(value), key + ".", value))
        else:
            rows.append((key, value if isinstance(value, str) and value.isprintable() else repr(value), field.description or ""))
    return rows
