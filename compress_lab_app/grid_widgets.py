"""Widgets for one technique's part of the grid, built from its config dataclass:
a Literal or bool field becomes a multiselect, a number field a comma-separated
list of values, anything else (tuples, tables) a JSON value under "More settings".
Each widget returns the values of that axis; the result is a [[grid]] table."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

import streamlit as st

from compress_lab.errors import ConfigError

# Shown first and outside "More settings" when a technique has them.
MAIN_FIELDS = ("mode", "nbits", "dtype", "weight_dtype", "granularity", "group_size", "block_size", "cluster_dim",
               "target_sparsity", "sparsity", "n_m_ratio", "steps", "epochs", "batch_size", "lr",
               "learning_rate", "optimizer")
# Fine-tuning settings: shown after the technique's own settings.
FINETUNE_FIELDS = ("steps", "epochs", "batch_size", "lr", "learning_rate", "optimizer")


@dataclass(frozen=True)
class FieldInfo:
    name: str
    kind: str  # "choice" | "number" | "text" | "json"
    default: Any
    options: tuple = ()
    number_type: type | None = None
    optional: bool = False

    @property
    def main(self) -> bool:
        return self.name in MAIN_FIELDS or (self.kind == "choice" and self.options[:2] != (False, True)
                                            and self.name != "precision")


def field_infos(config_cls) -> list[FieldInfo]:
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(_info(f.name, hints.get(f.name), default))
    order = {name: i for i, name in enumerate(MAIN_FIELDS)}
    return sorted(out, key=lambda i: (not i.main, i.name in FINETUNE_FIELDS, order.get(i.name, len(order))))


def _nbits_choices() -> tuple:
    try:
        from compress_lab.techniques.palettize import NBITS
        return tuple(NBITS)
    except ImportError:
        return (1, 2, 3, 4, 6, 8)


def _info(name: str, hint: Any, default: Any) -> FieldInfo:
    info = _plain_info(name, hint, default)
    if name == "nbits" and info.kind == "number" and info.number_type is int:
        options = _nbits_choices() + ((None,) if info.optional else ())
        if default in options:
            return FieldInfo(name, "choice", default, options, optional=info.optional)
    return info


def _plain_info(name: str, hint: Any, default: Any) -> FieldInfo:
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) == 1:
            hint, origin = args[0], typing.get_origin(args[0])
        elif all(typing.get_origin(a) is typing.Literal for a in args):
            options = tuple(v for a in args for v in typing.get_args(a))
            return FieldInfo(name, "choice", default, options + ((None,) if optional else ()), optional=optional)
        elif all(a in (int, float) for a in args):
            return FieldInfo(name, "number", default, number_type=float, optional=optional)
        else:
            return FieldInfo(name, "json", default, optional=optional)
    if origin is typing.Literal:
        options = typing.get_args(hint) + ((None,) if optional else ())
        return FieldInfo(name, "choice", default, options, optional=optional)
    if hint is bool:
        return FieldInfo(name, "choice", default, (False, True), optional=optional)
    if hint in (int, float):
        return FieldInfo(name, "number", default, number_type=hint, optional=optional)
    if hint is str:
        return FieldInfo(name, "text", default, optional=optional)
    return FieldInfo(name, "json", default, optional=optional)


def parse_numbers(text: str, info: FieldInfo) -> list:
    """'2, 4, 8' -> [2, 4, 8]; 'none' -> None for optional fields. Raises ConfigError naming the field."""
    values = []
    for raw in str(text).replace(";", ",").split(","):
        raw = raw.strip()
        if not raw:
            continue
        if raw.lower() in ("none", "null", "-"):
            if not info.optional:
                raise ConfigError(f"{info.name}: 'none' is not allowed here; give numbers")
            values.append(None)
            continue
        try:
            number = float(raw)
        except ValueError:
            raise ConfigError(f"{info.name}: {raw!r} is not a number; give values separated by commas, e.g. 2, 4, 8") from None
        if info.number_type is int:
            if not number.is_integer():
                raise ConfigError(f"{info.name}: {raw!r} must be a whole number")
            number = int(number)
        values.append(number)
    if not values:
        raise ConfigError(f"{info.name}: give at least one value")
    return list(dict.fromkeys(values))


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def field_widget(technique: str, info: FieldInfo, container) -> list:
    """The values of one axis, from a widget in `container`."""
    key = f"grid.{technique}.{info.name}"
    label = info.name.replace("_", " ")
    if info.kind == "choice":
        fmt = (lambda v: "yes" if v is True else "no" if v is False else "none" if v is None else str(v))
        chosen = container.multiselect(label, list(info.options), default=[info.default] if info.default in info.options else [],
                                       key=key, format_func=fmt)
        if not chosen:
            raise ConfigError(f"{technique}: pick at least one value of {info.name}")
        return chosen
    if info.kind == "number":
        text = container.text_input(label, value=_format_default(info.default), key=key,
                                    help="one value, or several separated by commas (each one is a point of the grid)")
        return parse_numbers(text, info)
    if info.kind == "text":
        text = container.text_input(label, value="" if info.default is None else str(info.default), key=key)
        return [v.strip() for v in text.split(",") if v.strip()] or [info.default]
    text = container.text_input(label, value=json.dumps(info.default), key=key,
                                help="a JSON value (one setting, not an axis)")
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as e:
        raise ConfigError(f"{technique}: {info.name} must be JSON ({e.msg}), e.g. {json.dumps(info.default)}") from None


def technique_table(technique: str, config_cls, columns: int = 4) -> dict:
    """Widgets for every setting of `technique`; returns its [[grid]] table
    (settings left at their single default are omitted)."""
    infos = field_infos(config_cls)
    main = [i for i in infos if i.main]
    more = [i for i in infos if not i.main]
    table: dict[str, Any] = {"technique": technique}
    errors = []
    cols = st.columns(columns)
    for n, info in enumerate(main):
        _collect(technique, info, cols[n % columns], table, errors)
    if more:
        with st.expander("More settings"):
            more_cols = st.columns(columns)
            for n, info in enumerate(more):
                _collect(technique, info, more_cols[n % columns], table, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return table


def _collect(technique, info, container, table, errors) -> None:
    try:
        values = field_widget(technique, info, container)
    except ConfigError as e:
        errors.append(str(e))
        return
    if values == [info.default]:
        return
    if info.kind == "json":
        table[info.name] = values[0]
    else:
        table[info.name] = values if len(values) > 1 else values[0]
