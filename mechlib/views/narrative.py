"""Glue a run's numbers into the chapter prose (myst-nb ``glue``), never typing them."""
from __future__ import annotations


class Text(str):
    """A string whose text/plain repr has no quotes, so ``{glue:text}`` shows it bare."""

    def __repr__(self) -> str:
        return str(self)


def flatten(metrics: dict, prefix: str = "") -> dict:
    """``{"acc": {"+": 1.0}}`` -> ``{"acc_+": 1.0}``; only scalars and strings survive."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}_"))
        elif isinstance(value, (int, float, str)) or value is None:
            flat[name] = value
    return flat


def glue_metrics(metrics: dict, prefix: str = "") -> dict:
    """Glue every scalar of (nested) metrics under its flattened name; return them."""
    from myst_nb import glue

    flat = flatten(metrics, prefix)
    for name, value in flat.items():
        glue(name, Text(value) if isinstance(value, str) else value, display=False)
    return flat


def and_list(items) -> str:
    """'a, b and c' (never 'a, b, c': the glue would read that as a tuple)."""
    items = list(items)
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def pct(x: float) -> str:
    """A share as a whole percentage, without a minus sign on a rounded zero."""
    return f"{x + 0.0:.0%}" if round(x * 100) != 0 else "0%"
