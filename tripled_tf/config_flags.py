"""Command-line flags generated from the typed config dataclasses, and the dataclasses built back.

The dataclasses (:class:`~tripled_tf.train_config.TrainConfig`, the model configs) are the one
definition of every option: its type, default, help text, choices and bounds. A field declared with
:func:`tripled_tf.options.option` gets an absl flag of the same name; the few flags whose shape differs from a field
(``--fx --fy --cx --cy`` for ``intrinsics``, ``--pose_height --pose_width`` for
``pose_input_size``, absl's own ``--log_dir``) are defined by the entry point itself and marked here
with ``flag=False``.

Type -> flag: bool -> DEFINE_bool, int -> DEFINE_integer (DEFINE_enum over the choices, e.g. ResNet
depths), float / Optional[float] -> DEFINE_float, str -> DEFINE_string (DEFINE_enum with choices),
Tuple[int, ...] / Tuple[bool, ...] -> DEFINE_list (comma-separated integers / 0-1 flags).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict

from absl import flags

# The flags this module defines belong to the module that asks for them (for --help, and for
# FLAGS.get_flags_for_module): the entry point, not this helper.
flags.disclaim_key_flags()

# (id(flag values), name) of every flag generated here: a field shared by two config classes gets one
# flag, while a flag of the same name defined by someone else is a conflict, not silently reused.
_GENERATED = set()


def _kind(config_class, field: dataclasses.Field) -> str:
    """The field's value type: "bool", "int", "float", "str", "ints" or "bools" (tuples)."""
    hint = typing.get_type_hints(config_class)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:  # Optional[X]
        hint, args = args[0], list(typing.get_args(args[0]))
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] in (int, bool):
            return f"{args[0].__name__}s"
    if hint in (bool, int, float, str):
        return hint.__name__
    raise TypeError(f"{config_class.__name__}.{field.name}: no flag type for {hint}; give the field "
                    f"option(..., flag=False) and define its flag by hand")


def flag_fields(config_class) -> list:
    """The fields of ``config_class`` that have a generated flag."""
    return [f for f in dataclasses.fields(config_class) if f.metadata.get("flag", False)]


def _flag_default(kind: str, default):
    if kind == "ints":
        return [str(v) for v in default]
    if kind == "bools":
        return [str(int(v)) for v in default]
    return default


def define_flags(config_class, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per :func:`~tripled_tf.options.option` field of ``config_class`` (fields already defined as
    flags, e.g. by a config class defined earlier that shares them, are left as they are)."""
    for field in flag_fields(config_class):
        if field.name in flag_values:
            if (id(flag_values), field.name) in _GENERATED:
                continue
            raise flags.DuplicateFlagError.from_flag(field.name, flag_values)
        _GENERATED.add((id(flag_values), field.name))
        kind, meta = _kind(config_class, field), field.metadata
        default, help_text = _flag_default(kind, field.default), meta["help"]
        if "choices" in meta:
            flags.DEFINE_enum(field.name, None if default is None else str(default),
                              [str(c) for c in meta["choices"]], help_text, flag_values=flag_values)
        elif kind == "bool":
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif kind == "int":
            flags.DEFINE_integer(field.name, default, help_text, lower_bound=meta.get("lower_bound"),
                                 flag_values=flag_values)
        elif kind == "float":
            flags.DEFINE_float(field.name, default, help_text, lower_bound=meta.get("lower_bound"),
                               flag_values=flag_values)
        elif kind == "str":
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
        else:  # "ints" / "bools"
            flags.DEFINE_list(field.name, default, help_text, flag_values=flag_values)


def _from_flag(name: str, kind: str, value):
    """A parsed flag value as the field holds it (enum strings of int choices -> int, lists ->
    tuples); ValueError naming the flag for a malformed list."""
    if value is None:
        return None
    if kind == "int":
        return int(value)
    if kind == "ints":
        try:
            return tuple(int(v) for v in value)
        except ValueError:
            raise ValueError(f"--{name}: expected a comma-separated list of integers, got "
                             f"{','.join(value)}") from None
    if kind == "bools":
        words = [v.strip().lower() for v in value]
        if any(w not in ("0", "1", "true", "false") for w in words):
            raise ValueError(f"--{name}: expected a comma-separated list of 0/1, got {list(value)}")
        return tuple(w in ("1", "true") for w in words)
    return value


def field_values(config_class, flag_values: flags.FlagValues = flags.FLAGS) -> Dict[str, Any]:
    """{field name: value} of every flag field of ``config_class``, from the parsed flags."""
    return {f.name: _from_flag(f.name, _kind(config_class, f), flag_values[f.name].value)
            for f in flag_fields(config_class)}


def flag_default_as_field(config_class, field: dataclasses.Field,
                          flag_values: flags.FlagValues = flags.FLAGS):
    """The default of ``field``'s flag, converted as :func:`field_values` converts a value."""
    return _from_flag(field.name, _kind(config_class, field), flag_values[field.name].default)
