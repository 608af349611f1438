"""The one helper a chapter notebook calls: parameters from the notebook's ``parameters``
cell (or a named parameter set), preflight checks, the run, its record and its glue.

A notebook holds::

    param_set = None          # e.g. "gpt2-small": a set from params/, then the cell's changes
    model = "arith-organism"  # ... one line per field of the chapter's Params
    ...
    params, result, found = run_chapter("01_baseline", globals())

A value in the ``parameters`` cell that differs from the chapter's default overrides the
set; papermill (``mechlib chapter``, ``make book``) injects every value explicitly.
"""
from __future__ import annotations

from .. import chapters
from ..views.narrative import glue_metrics
from .runs import Run


def params_from_namespace(chapter: str, namespace: dict):
    """The chapter's Params from a notebook's globals: ``param_set`` (or the defaults), then
    every field whose value in the namespace differs from the dataclass default."""
    cls = chapters.module(chapter).Params
    defaults = cls.defaults()
    overrides = {}
    for name in cls.field_names():
        if name in namespace:
            value = namespace[name]
            plain = list(value) if isinstance(value, tuple) else value
            if plain != defaults[name]:
                overrides[name] = value
    return cls.from_set(namespace.get("param_set"), overrides)


def quiet() -> None:
    """Settings for a clean page (see :func:`mechlib.views.quiet.quiet`)."""
    from ..views.quiet import quiet as _quiet

    _quiet()


def run_chapter(chapter: str, namespace: dict):
    """Validate, run, record and glue one chapter; return (params, result, findings).

    The run record's metrics are the findings (reproducible); wall-clock numbers go in
    its timings, and are glued too, so the prose can quote them."""
    from ..views import plots

    quiet()
    plots.enable()
    mod = chapters.module(chapter)
    params = params_from_namespace(chapter, namespace)
    record = Run(chapter, params.to_dict())
    result = mod.run(params)
    found = mod.findings(result)
    timings = dict(getattr(result, "timings", {}) or {})
    glue_metrics({**found, **timings})
    record.finish(found, timings=timings)
    return params, result, found
