"""Chapter 4's delta test on the pretrained model's tool fine-tune (chapter 6), on the page:
glued sentences and chart data read off :func:`mechlib.core.real_delta.study`'s output
(None when the test was not run)."""
from __future__ import annotations

import pandas as pd

from ..core import delta_study
from ..core.stats import fmt_interval
from .delta_summary import conditions_long, reference_sentence, seed_findings, verdict_sentence, verdict_view

SKILLS = {"new skill": "call opened (arithmetic)", "old skill": "exact copy"}
KEYS = ("real_delta_layers_text", "real_delta_choice_text", "real_delta_sizes_text", "real_delta_time_text", "real_delta_verdict",
        "real_delta_reason", "real_delta_sentence", "real_delta_conditions_text", "real_delta_controls_text",
        "real_delta_reference_sentence", "real_delta_sanity", "real_delta_seed_text", "real_delta_reconstruction_text",
        "real_delta_versus_text")


def choice_chart(delta: dict | None) -> pd.DataFrame:
    """The weight-patching designs for a bar chart: one row per layer ("only L"), the loss
    of the call's opening tokens, and whether the layer was studied."""
    if delta is None:
        return pd.DataFrame()
    c = delta["choice"]
    only = c[c.design == "only"]
    return pd.DataFrame({"layer": only.layer.astype(int), "opening loss": only.opener_loss,
                         "chosen": only.studied.map({True: "studied", False: "not studied"})})


def conditions(delta: dict | None) -> pd.DataFrame:
    """The splice conditions at the studied layers at once, in long form, for condition bars."""
    if delta is None:
        return pd.DataFrame()
    scope = str(delta["verdicts"].scope.iloc[0])
    doses = [label for label in delta["table"].label if label.startswith("alpha=")]
    long = conditions_long(delta["table"], scope, scopes=[scope], labels=(*delta_study.LABELS[:-1], *doses))
    long["layer"] = "layers " + " and ".join(str(x) for x in delta["layers"]) if len(delta["layers"]) > 1 else long["layer"]
    return long.assign(skill=long.skill.map(SKILLS))


def verdicts(delta: dict | None) -> pd.DataFrame:
    if delta is None:
        return pd.DataFrame()
    out = verdict_view(delta["seeds"]).drop(columns="scope")
    return pd.concat([pd.DataFrame({"seed": delta["seeds"].dictionary_seed.astype(int)}), out], axis=1)


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def loss_sentence(table: pd.DataFrame) -> str:
    """How much of the answer-loss gap between no_delta and the fine-tune base + delta
    closes: a continuous reading beside the accuracies, not an input to the verdict."""
    loss = table.set_index("label").answer_loss
    gap = loss["no_delta"] - loss["raw"]
    if gap <= 0:
        return "In answer loss, no_delta is no worse than the fine-tune, so there is no gap to close."
    return (f"In mean answer loss (nats per reply token, both skills), the fine-tune scores {loss['raw']:.3f}, no_delta "
            f"{loss['no_delta']:.3f} and full {loss['full']:.3f}: base + delta closes {(loss['no_delta'] - loss['full']) / gap:.0%} "
            "of the gap, a continuous reading that does not enter the verdict.")


def real_delta_findings(delta: dict | None, title: str, organism_verdict: str) -> dict:
    """The test in glued sentences, each naming the model; ``organism_verdict`` is the
    organism's verdict on its own tool fine-tune, set beside this one."""
    if delta is None:
        none = "Not measured: this run did not test the pretrained model's fine-tune for a delta (parameter real_delta)."
        return {k: none for k in KEYS}
    layers = " and ".join(str(x) for x in delta["layers"])
    c, n, cfg, s = delta["choice"], delta["n"], delta["config"], delta["seconds"]
    loss = c.set_index("design").opener_loss
    only = c[c.studied]
    g = delta["table"].set_index("label")
    v = delta["verdicts"].iloc[0]

    def acc(label: str, skill: str = "new") -> str:
        row = g.loc[label]
        return fmt_interval(row[f"acc_{skill}"], row[f"{skill}_lo"], row[f"{skill}_hi"], int(row[f"n_{skill}"]))

    rec = delta["reconstruction"].set_index(["layer", "dictionary"]).explained_variance
    ev = "; ".join(f"layer {layer}: base on the base model {rec[(layer, 'base on base')]:.3f}, base on the fine-tune "
                   f"{rec[(layer, 'base on fine-tuned')]:.3f}, base + delta on the fine-tune {rec[(layer, 'base + delta on fine-tuned')]:.3f}"
                   for layer in delta["layers"])
    seeds = seed_findings(delta["seeds"])
    chosen = delta["sweep"][delta["sweep"].chosen]
    return {
        "real_delta_layers_text": f"layers {layers} of {title}",
        "real_delta_choice_text": (
            f"The loss of the call's opening tokens, teacher-forced on {n['choose']} held-out arithmetic "
            f"requests, is {loss['base']:.2f} nats for the base model and {loss['fine-tuned']:.3f} for the fine-tune; with one "
            f"layer's update alone it is lowest at layers {layers} ("
            + ", ".join(f"{lo:.2f}" for lo in only.opener_loss) + ")"),
        "real_delta_sizes_text": (
            f"a TopK base dictionary of {cfg['base_width']} latents (k = {cfg['base_k']}) per layer on the "
            f"{delta['d_model']}-dimensional MLP output, and deltas of {' or '.join(map(str, cfg['delta_widths']))} latents "
            f"(k = {' or '.join(map(str, cfg['delta_ks']))}; "
            "chosen per layer by validation reconstruction: "
            + "; ".join(f"at layer {int(r.layer)}, {int(r.delta_width)} latents with k = {int(r.delta_k)}" for r in chosen.itertuples())
            + f"), trained on the {n['train_rows']:,} reply positions of {n['train']} training requests and validated on "
              f"{n['val']} held-out ones"),
        "real_delta_time_text": (f"The test took {s['total']:.0f} s with {delta['threads']} torch thread"
                                 f"{'s' if delta['threads'] > 1 else ''}: {s['choose_layers']:.0f} s choosing the layers, "
                                 f"{s['dictionaries']:.0f} s for the dictionaries, {s['conditions']:.0f} s for the conditions and "
                                 f"{s['seed_repeats']:.0f} s repeating the headline with another dictionary seed"),
        "real_delta_verdict": v.verdict,
        "real_delta_reason": v.reason,
        "real_delta_sentence": f"For {title}, " + lower_first(verdict_sentence(v.verdict, "the call habit")),
        "real_delta_conditions_text": (
            f"On {n['eval_new']} held-out arithmetic requests the fine-tune (raw) opens the call exactly on {acc('raw')}; "
            f"with base + delta spliced in at both layers (full) {acc('full')}; with the base dictionary alone (no_delta) "
            f"{acc('no_delta')}; the base model, given the request alone, {delta['base_new']:.0%} (a control by construction: "
            f"it was never shown the format). On {n['eval_old']} copy requests the fine-tune copies exactly on "
            f"{acc('raw', 'old')}, with full {acc('full', 'old')} and with no_delta {acc('no_delta', 'old')}"),
        "real_delta_controls_text": (
            f"the controls give {acc('random_delta')} (random_delta), {acc('base_delta')} (base_delta) and "
            f"{acc('old_delta')} (old_delta), and the reference wide_base {acc('wide_base')}"),
        "real_delta_reference_sentence": reference_sentence(v) + " " + loss_sentence(delta["table"]),
        "real_delta_sanity": delta["sanity"][str(v.scope)],
        "real_delta_seed_text": (f"Across dictionary seeds {seeds['seed_list']}, removing the delta costs "
                                 f"{seeds['seed_cost_text']}. {seeds['seed_sentence']}"),
        "real_delta_reconstruction_text": f"Validation explained variance: {ev}",
        "real_delta_versus_text": (f"On the organism's own tool fine-tune (above) the verdict is '{organism_verdict}'; on {title}'s, "
                                   f"'{v.verdict}'." + (" The two agree." if organism_verdict == v.verdict else " They differ.")
                                   + (" An inconclusive verdict is not a negative one: the dictionaries affordable here break the "
                                      "habit when spliced in, so the test cannot say where it lives." if v.verdict == "inconclusive" else "")),
    }

