"""Typed settings: `--set key=value` strings -> a method's Config dataclass, with clear errors."""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing

from methods.base import ConfigError, MethodConfig


def _coerce(name: str, raw, typ):
    if not isinstance(raw, str):
        return tuple(raw) if isinstance(raw, list) else raw
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"setting {name}={raw!r}: expected true or false")
    if origin is tuple:
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if raw.lower() in ("none", "null", ""):
            return None
        return _coerce(name, raw, next(a for a in args if a is not type(None)))
    try:
        return typ(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}={raw!r}: expected a value of type {getattr(typ, '__name__', typ)}") from None


def make_config(cls: type[MethodConfig], overrides: dict | None = None) -> MethodConfig:
    """Build and validate `cls` from defaults plus overrides (strings from the CLI, or typed values)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, raw in (overrides or {}).items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            valid = "; ".join(f"{n} ({t}, default {d})" for n, t, d, _ in describe_settings(cls)) or "none"
            raise ConfigError(f"unknown setting {key!r} for this method.{hint} Settings: {valid}")
        values[key] = _coerce(key, raw, hints[key])
    cfg = cls(**values)
    for f in dataclasses.fields(cfg):  # NaN and inf pass every `x <= 0` check: refuse them for all settings
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"setting {f.name}={v} must be a finite number")
    cfg.validate()
    return cfg


def parse_set_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def suggest(trial, space: dict) -> dict:
    """Settings drawn by an Optuna trial from a method's declared `search_space`."""
    out = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=bool(spec[3]) if len(spec) > 3 else False)
        elif kind == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2])
        elif kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(spec[1]))
        else:
            raise ConfigError(f"search space entry {name}: unknown kind {kind!r}")
    return out


def _field_comments(cls) -> dict[str, str]:
    """The trailing `# comment` of each field line in the class bodies of `cls` and its bases: the settings'
    one-line help lives beside them in the source, so it cannot drift from the code."""
    import inspect
    import re
    out: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if k is not object]):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s{4}(\w+)\s*:[^=\n]+=[^#\n]*#\s*(.+)$", src, re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def describe_settings(cls: type[MethodConfig]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of every setting of a method's Config, in declaration order."""
    hints = typing.get_type_hints(cls)
    helps = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        typ = hints.get(f.name, f.type)
        tname = getattr(typ, "__name__", None) or str(typ).replace("typing.", "")
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        rows.append((f.name, tname, repr(default) if isinstance(default, str) else str(default),
                     helps.get(f.name, "")))
    return rows


def settings_table(cls: type[MethodConfig]) -> str:
    rows = describe_settings(cls)
    if not rows:
        return "  (no settings)"
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {n:<{w[0]}}  {t:<{w[1]}}  {d:<{w[2]}}  {h}".rstrip() for n, t, d, h in rows)
