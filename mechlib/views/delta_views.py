"""Chapter 4's chart data and tables, read off a run's result."""
from __future__ import annotations

import pandas as pd

from ..core import delta_study
from .delta_summary import scope_name


def dose_long(result, every_layer: bool = False) -> pd.DataFrame:
    """base + alpha x delta per scope and skill (the focus layer and all layers at once, or
    ``every_layer``), with a ``series`` label for one line each."""
    doses = delta_study.long_table(result.table[result.table.alpha.notna()], list(result.table.label.unique()))
    if not every_layer:
        doses = doses[doses.scope.isin([str(result.focus_layer), delta_study.ALL])]
    doses["series"] = doses.skill + ", " + doses.scope.map(scope_name)
    return doses.reset_index(drop=True)


def localisation_long(result, per_layer: bool = True) -> pd.DataFrame:
    """Weight patching in long form; ``per_layer`` keeps the two ends and whole layers (for the
    chart), else the component designs."""
    loc = result.localisation
    whole = loc.which.str.fullmatch(r"L\d+") | loc.design.isin(["base", "fine-tuned"])
    out = loc[whole if per_layer else ~whole].copy()
    out["layer"] = out.design.map({"base": "ends", "fine-tuned": "ends"}).fillna(out.design)
    out["label"] = out.which.map({"none": "base", "all": "fine-tuned"}).fillna(out.which)
    return out.reset_index(drop=True)


def latent_view(result) -> pd.DataFrame:
    """The described latents: effects (nats of answer loss when switched off) and description."""
    if not len(result.latents):
        return pd.DataFrame({"note": ["no latent fired on the evaluation problems"]})
    lat = result.latents
    return pd.DataFrame({"dict": lat.which, "latent": lat.latent, "+loss new": lat.loss_rise_new,
                         "+loss old": lat.get("loss_rise_old", float("nan")), "fires": lat.fire_rate,
                         "description": lat.description, "strongest rows": lat.get("top_examples", "")})


def seeds_view(result) -> pd.DataFrame:
    """The headline test per dictionary seed, in points on the new skill."""
    v = result.seeds
    return pd.DataFrame({"dictionary seed": v.dictionary_seed, "verdict": v.verdict, "full": v.full_new, "no_delta": v.no_delta_new,
                         "cost new": v.cost_new, "cost old": v.cost_old})


def sweep_view(result) -> pd.DataFrame:
    """The delta sweep, narrow: layer, width, k, validation EV, NMSE, dead share, chosen."""
    s = result.sweep
    return pd.DataFrame({"layer": s.layer, "width": s.delta_width, "k": s.delta_k, "EV": s.explained_variance, "NMSE": s.nmse,
                         "dead": s.dead_fraction, "chosen": s.chosen.map({True: "yes", False: ""})})


def reconstruction_view(result) -> pd.DataFrame:
    b = result.base
    return pd.DataFrame({"layer": b.layer, "dictionary": b.dictionary, "EV": b.explained_variance, "NMSE": b.nmse, "L0": b.l0})
