"""A delta study's numbers in words and narrow tables, shared by the chapters that run one
(chapter 4 on a LoRA fine-tune, chapter 6 on a tool-use fine-tune)."""
from __future__ import annotations

import re

import pandas as pd

from ..core import delta_study
from ..core.stats import fmt_interval, seed_spread


def seed_findings(seeds: pd.DataFrame) -> dict:
    """The headline cost and verdict across dictionary seeds, in words."""
    names = [str(s) for s in seeds.dictionary_seed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]  # never "0, 1, 2": it glues as a tuple
    cost = seed_spread(seeds.cost_new.tolist())
    verdicts = seeds.verdict.tolist()
    same = len(set(verdicts)) == 1
    return {
        "seed_list": listed,
        "seed_cost_text": (f"{cost['min']:.1f} to {cost['max']:.1f} points over {len(seeds)} seeds (mean {cost['mean']:.1f})"
                           if len(seeds) > 1 else f"{cost['mean']:.1f} points (one seed only)"),
        "seed_sentence": (f"The verdict is '{verdicts[0]}' for every dictionary seed." if same and len(seeds) > 1 else
                          f"The verdict is '{verdicts[0]}' (one dictionary seed only)." if same else
                          "The verdict changes with the dictionary seed (" + ", ".join(
                              f"seed {s}: {v}" for s, v in zip(seeds.dictionary_seed, verdicts)) + "), so it is not robust."),
    }


def localisation_sentence(loc: pd.DataFrame) -> str:
    """Where the update matters, in words, from the weight-patching numbers: the share of the
    added skill that one layer's update gives alone, and that removing one layer's costs."""
    new = loc[loc.skill == "new skill"].set_index(["design", "which"]).accuracy
    base, tuned = new[("base", "none")], new[("fine-tuned", "all")]
    added = tuned - base
    if added <= 0:
        return "The fine-tune is no better than the base at the new skill, so there is nothing to localise."
    only = {w: (a - base) / added for (d, w), a in new.items() if d == "only" and re.fullmatch(r"L\d+", w)}
    but = {w: (a - base) / added for (d, w), a in new.items() if d == "all but"}
    best = max(only, key=only.get)
    if only[best] >= 0.5:
        return f"The update in {best} alone gives {only[best]:.0%} of the added skill: the skill is localised there."
    needed = [w for w, share in sorted(but.items()) if share < 0.5]
    if needed:
        return (f"No single layer's update does the skill on its own (the best, {best}, gives {only[best]:.0%} of the added skill), "
                f"and removing the update from any one of {', '.join(needed)} leaves less than half of it: the skill needs the "
                "update in several layers together.")
    return (f"No single layer's update does the skill on its own (the best, {best}, gives {only[best]:.0%} of the added skill), "
            "yet no single layer is indispensable either: the update is spread and redundant.")


def scope_name(scope) -> str:
    return "all layers" if str(scope) == delta_study.ALL else f"layer {scope}"


def conditions_long(table: pd.DataFrame, focus_layer, scopes=None, labels=delta_study.LABELS[:-1]) -> pd.DataFrame:
    """The conditions in long form (scope, label, skill, n, accuracy, interval) at the given
    scopes (default: the focus layer and all layers at once), with a ``layer`` column for charts."""
    scopes = [str(s) for s in (scopes or [focus_layer, delta_study.ALL])]
    long = delta_study.long_table(table, labels)
    long = long[long.scope.isin(scopes)].copy()
    long["layer"] = long.scope.map(scope_name)
    return long.reset_index(drop=True)


def verdict_view(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per scope: the verdict and the numbers it rests on, in accuracy points (cost = full -
    no_delta on each skill; a control's gain = control - no_delta on the new skill; the paired
    test of full against no_delta on the new skill)."""
    v = verdicts
    out = pd.DataFrame({"scope": v.scope.map(scope_name), "verdict": v.verdict, "cost new": v.cost_new, "cost old": v.cost_old})
    for c, short in (("random_delta", "gain random"), ("base_delta", "gain base-trained"), ("old_delta", "gain old-skill")):
        if f"gain_{c}" in v:
            out[short] = v[f"gain_{c}"]
    if "paired_p" in v:
        out["paired p"] = [f"{p:.2g}" for p in v.paired_p]
    return out


def reference_sentence(row) -> str:
    """The unsplit reference (wide_base) in words, from one verdict row: how much of what it
    restores over no_delta base + delta restores. A reference, not a control."""
    ceiling = row["reference_new"] - row["no_delta_new"]
    if not ceiling == ceiling:
        return "No unsplit reference dictionary was measured."
    if ceiling <= 0:
        return ("An unsplit dictionary of the same width (wide_base, a reference) restores nothing of the new skill over "
                "no_delta, so it sets no ceiling here.")
    return (f"An unsplit dictionary of the same width trained on the fine-tuned activations (wide_base, a fidelity reference "
            f"that sees the new skill's activations, so not a control) restores {ceiling:.1f} points of the new skill over "
            f"no_delta; base + delta restores {row['cost_new']:.1f}, {row['cost_new'] / ceiling:.0%} of that.")


def count_text(n) -> str:
    """An integer with thin spaces between thousands (``208 512``): a comma would make the
    glued text read as a Python tuple."""
    return f"{int(n):,}".replace(",", "\u202f")


def row_text(row) -> str:
    return fmt_interval(row["accuracy"], row["lo"], row["hi"], int(row["n"]))


def verdict_sentence(verdict: str, skill: str = "the new skill") -> str:
    """The verdict in one plain sentence about ``skill``."""
    return {
        "in the delta": f"The data support the hypothesis: {skill} lives in the delta.",
        "partly in the delta": f"The data support the hypothesis only in part: the delta carries some of {skill}, and the rest lives elsewhere.",
        "not in the delta": f"The data go against the hypothesis: removing the delta does not remove {skill}.",
        "inconclusive": f"The data cannot answer the question: the splice itself breaks {skill}.",
    }[verdict]
