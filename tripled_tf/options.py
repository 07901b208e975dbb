"""Fields of the typed config dataclasses with what a command-line flag needs (no absl here: the model
configs use it, and models must not depend on the command line; tripled_tf.config_flags turns the
fields into flags)."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional


def option(default: Any, help: str, *, choices: Optional[Iterable] = None,
           lower_bound: Optional[float] = None, flag: bool = True) -> Any:
    """A dataclass field with what its command-line flag needs: the help text, the allowed values
    (``choices``), a ``lower_bound``; ``flag=False`` for a field the entry point maps by hand."""
    metadata = {"help": help, "flag": flag}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if lower_bound is not None:
        metadata["lower_bound"] = lower_bound
    return dataclasses.field(default=default, metadata=metadata)
