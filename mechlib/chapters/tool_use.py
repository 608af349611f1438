"""Chapter 6, teach the model to call a calculator instead of computing: a LoRA fine-tune
that answers problems it cannot solve with a call (``[37*48]``) and problems it can solve
directly, scored end to end through a safe evaluator; then chapter 4's delta test on the
call-or-compute habit."""
from __future__ import annotations

import dataclasses
import time

import pandas as pd
from datasets import Dataset, Features, Value

from ..core import data, delta_study, real_delta, tool_study
from ..core import lora as ft
from ..core.delta_latents import describe, embedding_share
from ..core.delta_sites import collect_rows, pick_focus_layer, seed_repeats, train_sites, verdict_table
from ..core.delta_study import DeltaConfig
from ..core.evaluate import evaluate
from ..core.model_jobs import MAX_BATCH
from ..core.organism import OrganismRecipe
from ..core.parallel import beside, machine_to_ourselves
from ..core.problem_sets import last_positions
from ..core.stats import fmt_interval
from ..core.tool_scoring import call_operator, metrics, read_answers, wrong_calls
from ..views.delta_summary import reference_sentence, seed_findings, verdict_sentence
from ..views.quiet import quiet
from ..views.real_delta_views import real_delta_findings
from ..views.tool_real import real_findings, real_title
from ..views.tool_views import wrong_call_counts
from . import preflight
from .base import (
    ModelParams,
    difficulties_field,
    is_alphas,
    is_int,
    is_name,
    is_number,
    is_str,
    list_of,
    one_of,
    operators_field,
    param,
    prompt_format_field,
)

CHAPTER = "06_tool_use"
SUBSETS = {
    "tool": "needs a call: an operator the model cannot compute, on held-out operand pairs",
    "copy": "must not call: a skill the model has (its own held-out addition pairs)",
    "tool_ood": "needs a call on an operator never seen in fine-tuning",
}
METRICS = ("tool_call_rate", "valid_tool_format_rate", "math_correct_rate")
EVAL_FEATURES = Features({
    "subset": Value("string"), "prompt": Value("string"), "target": Value("string"), "a": Value("int64"),
    "op": Value("string"), "b": Value("int64"), "answer": Value("int64"), "difficulty": Value("string"),
    "carries": Value("int32"), "needs_call": Value("bool"),
})


@dataclasses.dataclass(frozen=True)
class Params(ModelParams):
    chapter = CHAPTER
    tool_operators: tuple[str, ...] = operators_field(("*",))
    copy_operators: tuple[str, ...] = operators_field(("+",))
    ood_operators: tuple[str, ...] = operators_field(("-",), min_len=0)
    difficulties: tuple[str, ...] = difficulties_field(("1x1", "1x2", "2x2"))
    prompt_format: str = prompt_format_field()
    call_style: str = param("short", one_of("short", "long"),
                            "'short' ([37*48], for the organism's 32-token context) or 'long' (<tool_call>calculator(37*48)</tool_call>)")
    n_eval_per_cell: int = param(150, is_int(1, 100_000), "an integer in 1..100000 (evaluation problems per operator and difficulty)")
    copy_fraction: float = param(0.5, is_number(0.0, 0.95), "a number in 0..0.95 (share of each batch of direct-answer problems)")
    heldout_fraction: float = param(0.1, is_number(0.01, 0.5), "a number in 0.01..0.5 (share of call problems never trained on)")
    steps: int = param(1200, is_int(1, 1_000_000), "an integer in 1..1000000")
    lora_batch_size: int = param(128, is_int(1, 65536), "an integer in 1..65536")
    lr: float = param(0.003, is_number(1e-6, 0.1), "a number in 1e-06..0.1")
    rank: int = param(16, is_int(1, 1024), "an integer in 1..1024")
    alpha: int = param(32, is_int(1, 4096), "an integer in 1..4096")
    train_positions: bool = param(True, lambda v: isinstance(v, bool),
                                  "true or false (also train the position embeddings: calls run past the organism's trained positions)")
    eval_every: int = param(100, is_int(1, 100_000), "an integer in 1..100000")
    finetuned_name: str = param("arith-organism-lora-tool", is_name, "a name of letters, digits, '-', '_' and '.'")
    # chapter 4's delta test on this fine-tune
    layers: tuple[int, ...] = param((), list_of(is_int(0, 1000), min_len=0), "a list of layer indices; [] means every layer")
    n_train_per_cell: int = param(400, is_int(1, 100_000), "an integer in 1..100000 (dictionary training problems per cell)")
    n_val_per_cell: int = param(60, is_int(1, 100_000), "an integer in 1..100000")
    base_width: int = param(256, is_int(1, 10_000_000), "an integer in 1..10000000")
    base_k: int = param(16, is_int(1, 100_000), "an integer in 1..100000")
    delta_widths: tuple[int, ...] = param((32, 64, 128), list_of(is_int(1, 1_000_000)), "a non-empty list of integers")
    delta_ks: tuple[int, ...] = param((4, 8), list_of(is_int(1, 100_000)), "a non-empty list of integers")
    delta_tolerance: float = param(0.005, is_number(0, 1), "a number in 0..1")
    n_tokens: int = param(40000, is_int(1, 10**9), "an integer in 1..1000000000 (activation rows per dictionary)")
    batch_tokens: int = param(512, is_int(1, 1_000_000), "an integer in 1..1000000")
    buffer_tokens: int = param(16384, is_int(2, 100_000_000), "an integer in 2..100000000")
    dictionary_lr: float = param(0.003, is_number(1e-6, 1), "a number in 1e-06..1")
    alphas: tuple[float, ...] = param((0, 0.5, 1, 1.5), is_alphas, "a list of numbers in 0..100 that includes 0 (no_delta) and 1 (full)")
    dictionary_seeds: tuple[int, ...] = param((1, 2), list_of(is_int(0, 2**31 - 1), min_len=0), "a list of seeds (possibly empty)")
    n_latents: int = param(5, is_int(1, 100), "an integer in 1..100")
    n_base_latents: int = param(3, is_int(0, 100), "an integer in 0..100")
    # the pretrained model's part (mechlib.core.tool_study): natural-language requests, the source's call format
    real_model: str = param("gemma-3-270m", lambda v: v == "" or is_str(v), "a model name or path, or '' for none",
                            "a pretrained model taught to call the calculator (the chapter's second part)")
    real_steps: int = param(40, is_int(1, 5000), "an integer in 1..5000")
    real_lora_batch_size: int = param(8, is_int(1, 256), "an integer in 1..256")
    real_lr: float = param(0.002, is_number(1e-6, 0.1), "a number in 1e-06..0.1")
    real_rank: int = param(8, is_int(1, 256), "an integer in 1..256 (LoRA alpha is twice the rank)")
    real_n_per_operator: int = param(50, is_int(1, 10_000), "an integer in 1..10000",
                                     "requests scored per operator in tool and tool_ood, and copy requests, in each condition")
    real_workers: int = param(2, is_int(1, 2), "1 or 2", "2: the pretrained model's part runs in its own process, beside the organism's")
    real_delta: bool = param(True, lambda v: isinstance(v, bool), "true or false",
                             "run chapter 4's delta test on the pretrained model's fine-tune (a few minutes on a CPU)")
    real_delta_n_eval: int = param(30, is_int(1, 10_000), "an integer in 1..10000",
                                   "held-out requests per operator in the delta test, and as many copy requests")
    real_delta_n_train: int = param(100, is_int(1, 10_000), "an integer in 1..10000",
                                    "training requests per operator, and as many copy requests, whose reply rows train the dictionaries")
    real_delta_base_width: int = param(1024, is_int(2, 1_000_000), "an integer in 2..1000000", "base dictionary latents per layer")
    real_delta_n_tokens: int = param(30000, is_int(1, 10**9), "an integer in 1..1000000000", "activation rows per dictionary")

    def check(self):
        groups = {"tool_operators": self.tool_operators, "copy_operators": self.copy_operators, "ood_operators": self.ood_operators}
        names = list(groups)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = sorted(set(groups[a]) & set(groups[b]))
                if both:
                    self.fail(b, f"{both} are also in {a!r}; the subsets must not share an operator")
        if self.base_k > self.base_width:
            self.fail("base_k", f"must be <= 'base_width' ({self.base_width})")

    def delta(self) -> DeltaConfig:
        """Chapter 4's delta study on this fine-tune: TopK SAEs trained here, the tool
        operators as the new skill."""
        return DeltaConfig(new_operators=self.tool_operators, kind="sae", activation="topk", base_source="train",
                           base_width=self.base_width, base_k=self.base_k, delta_widths=self.delta_widths, delta_ks=self.delta_ks,
                           delta_tolerance=self.delta_tolerance, l1=0.0, lr=self.dictionary_lr, n_tokens=self.n_tokens,
                           batch_tokens=self.batch_tokens, buffer_tokens=self.buffer_tokens, alphas=self.alphas,
                           dictionary_seeds=self.dictionary_seeds, n_latents=self.n_latents, n_base_latents=self.n_base_latents,
                           batch_size=self.batch_size, seed=self.seed)


@dataclasses.dataclass
class Result:
    params: Params
    evals: pd.DataFrame  # the evaluation problems, one row per (subset, problem)
    answers: pd.DataFrame  # before/after outputs read through the tool, column ``model``
    metrics: pd.DataFrame  # per model, subset and metric: n, rate, interval
    wrong_calls: pd.DataFrame  # calls that do not give the right answer, classified
    history: pd.DataFrame
    n_train_calls: int  # call problems trained on
    delta: dict  # chapter 4's test on this fine-tune: table, verdicts, seeds, latents, focus layer
    timings: dict
    real: dict | None = None  # the pretrained model's part (tool_study.study); None when real_model is ''


def recipe(params: Params) -> ft.FinetuneRecipe:
    """The fine-tuning recipe: the tool operators' problems with call targets, the copy
    operators' problems with answers, replayed at ``copy_fraction``."""
    return ft.FinetuneRecipe(
        base=params.model, operators=params.tool_operators, difficulties=params.difficulties,
        replay_operators=params.copy_operators, replay_fraction=params.copy_fraction, prompt_format=params.prompt_format,
        heldout_fraction=params.heldout_fraction, steps=params.steps, batch_size=params.lora_batch_size, lr=params.lr,
        rank=params.rank, alpha=params.alpha, eval_every=params.eval_every, seed=params.seed, task="tool",
        call_style=params.call_style, train_positions=params.train_positions,
    ).validate()


def check(params: Params) -> None:
    spec = preflight.model(params)
    ops = tuple(params.tool_operators) + tuple(params.copy_operators) + tuple(params.ood_operators)
    preflight.fits_context(spec, ops, params.difficulties, params.prompt_format, chapter=CHAPTER)
    widest = []  # the longest operands of every cell, as calls
    for op in ops:
        for d in params.difficulties:
            da, db = data.parse_difficulty(d)
            widest.append(data.problem_row(10**da - 1, op, 10**db - 1, params.prompt_format))
    calls = ft.as_calls(pd.DataFrame(widest), params.call_style)
    tok = spec.tokenizer()
    longest = max(len(tok(p + t)["input_ids"]) for p, t in zip(calls.prompt, calls.target))
    if spec.n_ctx is not None and longest + 2 > spec.n_ctx:
        params.fail("call_style", f"a prompt with its call takes {longest + 2} tokens, more than model {params.model!r}'s context "
                                  f"of {spec.n_ctx}; use 'short' calls or smaller difficulties")
    if not ft.is_current(params.finetuned_name, recipe(params)):
        try:
            ft.check_name_free(params.finetuned_name, recipe(params))
        except ValueError as err:
            params.fail("finetuned_name", str(err))
        preflight.writable_cache(f"{CHAPTER}: the fine-tune {params.finetuned_name!r} must be trained and saved", "finetuned")
    bad = [layer for layer in params.layers if spec.n_layers is not None and layer >= spec.n_layers]
    if bad:
        params.fail("layers", f"{bad} out of range: model {params.model!r} has layers 0..{spec.n_layers - 1}")
    preflight.pretrained_part(params, real_config)


def real_config(params: Params) -> tool_study.ToolLoraConfig | None:
    from ..core.models import resolve_device

    if not params.real_model:
        return None
    return tool_study.ToolLoraConfig(model=params.real_model, steps=params.real_steps, batch_size=params.real_lora_batch_size,
                                     lr=params.real_lr, rank=params.real_rank, n_per_operator=params.real_n_per_operator,
                                     seed=params.seed, device=resolve_device(params.device), eval_batch=min(params.batch_size, MAX_BATCH))


def real_delta_config(params: Params) -> real_delta.RealDeltaConfig:
    """The delta test on the pretrained model's fine-tune: its sizes from the parameters,
    the base's k a thirty-second of its width (at least 1), the rest the test's defaults."""
    return real_delta.RealDeltaConfig(n_eval=params.real_delta_n_eval, n_train=params.real_delta_n_train,
                                      base_width=params.real_delta_base_width, base_k=max(1, params.real_delta_base_width // 32),
                                      n_tokens=params.real_delta_n_tokens, seed=params.seed)


def eval_set(params: Params, heldout: pd.DataFrame) -> Dataset:
    """The three evaluation subsets as one ``datasets.Dataset`` with explicit features. ``tool``
    and ``copy`` are the fine-tune's held-out problems (never trained on, in either operand
    order; ``copy`` is the organism's own held-out addition when the base is the organism);
    ``tool_ood`` uses operators the fine-tune never saw. Each keeps ``n_eval_per_cell`` per cell."""
    is_tool = heldout.op.isin(params.tool_operators)
    parts = [heldout[is_tool].assign(subset="tool", needs_call=True), heldout[~is_tool].assign(subset="copy", needs_call=False)]
    if params.ood_operators:
        ood = data.make_problems(list(params.ood_operators), list(params.difficulties), params.n_eval_per_cell,
                                 params.prompt_format, params.seed + 3).to_pandas()
        parts.append(ft.as_calls(ood, params.call_style).assign(subset="tool_ood", needs_call=True))
    frame = pd.concat([p.groupby(["op", "difficulty"], group_keys=False).head(params.n_eval_per_cell) for p in parts], ignore_index=True)
    return Dataset.from_pandas(frame[list(EVAL_FEATURES)], features=EVAL_FEATURES, preserve_index=False)


def operator_copying(result: Result) -> dict:
    """On ``tool_ood`` problems (an operator never trained with calls): how many failed calls
    copy both operands right but write a trained call operator instead of the problem's."""
    a = result.answers
    failed = a[(a.model == "after") & (a.subset == "tool_ood") & a.needs_call & ~a.math_correct & a.called & a.valid]
    trained = 0
    for row in failed.itertuples():
        op = call_operator(row.call_expression)
        if op in result.params.tool_operators:
            left, _, right = str(row.call_expression).replace(" ", "").partition(op)
            trained += (int(left), int(right)) == (row.a, row.b)
    n = len(failed)
    tool_ops = " ".join(result.params.tool_operators)
    if not n:
        sentence = "No valid call on tool_ood problems failed, so there is no operator error to read."
    elif trained / n >= 0.5:
        sentence = (f"In {trained} of {n} valid but wrong calls on tool_ood problems the fine-tune copies both operands and "
                    f"writes the trained call operator ({tool_ops}) instead of the problem's: it learned to emit a call with "
                    "the operator it was trained on, not to copy the problem into the call.")
    else:
        sentence = (f"Only {trained} of {n} valid but wrong calls on tool_ood problems write the trained call operator "
                    f"({tool_ops}) with the operands copied right; the failures are not mainly an operator copied from training.")
    return {"ood_failed_calls": n, "ood_trained_operator_calls": trained, "ood_operator_sentence": sentence}


def run(params: Params) -> Result:
    """Fine-tune (or find the cached fine-tune), evaluate before and after, then chapter 4's
    delta test on the call habit."""
    from ..core.models import load_model, resolve_device

    check(params)
    config = real_config(params)

    def organism_part():
        start = time.perf_counter()
        path = ft.ensure_finetuned(recipe(params), params.finetuned_name, progress=False, device=resolve_device(params.device))
        timings = {"finetune_seconds": round(time.perf_counter() - start, 1)}
        heldout = ft.load_heldout(path)
        evals = eval_set(params, heldout).to_pandas()
        base_lm, _ = load_model(params.model, device=params.device)
        ft_lm, _ = load_model(params.finetuned_name, device=params.device)
        frames = [read_answers(evaluate(m, evals, batch_size=params.batch_size), params.call_style).assign(model=name)
                  for name, m in (("before", base_lm), ("after", ft_lm))]
        answers = pd.concat(frames, ignore_index=True)
        t = time.perf_counter()
        delta = delta_test(params, base_lm, ft_lm, evals)
        timings["delta_seconds"] = round(time.perf_counter() - t, 1)
        timings["run_seconds"] = round(time.perf_counter() - start, 1)
        all_calls = ft.all_problems(params.tool_operators, params.difficulties, params.prompt_format)
        n_train_calls = len(all_calls) - int(heldout.op.isin(params.tool_operators).sum())
        return Result(params, evals, answers, metrics(answers), wrong_calls(answers), ft.load_history(path), n_train_calls, delta, timings)

    # The pretrained model's fine-tune runs beside the organism's part, one torch thread each; its
    # scoring (decoding with a 262,144-token unembedding) then has the machine to itself.
    result, ensure_seconds = beside(organism_part, tool_study.finetune if config else None, (config, quiet), params.real_workers)
    real = None
    if config is not None:
        with machine_to_ourselves():
            models = tool_study.load_pair(config)
            real = tool_study.study(config, ensure_seconds=ensure_seconds, models=models)
            if params.real_delta:
                real["delta"] = real_delta.study(config, real_delta_config(params), *models)
            del models
    return dataclasses.replace(result, real=real)


def delta_test(params: Params, base_lm, ft_lm, evals: pd.DataFrame) -> dict:
    """Chapter 4's machinery on this fine-tune: the new skill is the exact call on ``tool``
    problems, the old one the exact answer on ``copy`` problems."""
    config = params.delta()
    ops = list(params.tool_operators) + list(params.copy_operators)
    problems = evals[evals.subset.isin(["tool", "copy"])].reset_index(drop=True)
    train = data.make_problems(ops, list(params.difficulties), params.n_train_per_cell, params.prompt_format, params.seed).to_pandas()
    val = data.make_problems(ops, list(params.difficulties), params.n_val_per_cell, params.prompt_format, params.seed + 1).to_pandas()
    train, val = (_with_calls(x, params) for x in (train, val))
    layers = list(params.layers) or list(range(base_lm.cfg.n_layers))
    rows = collect_rows(base_lm, ft_lm, layers, config, train, val)
    sites = train_sites(base_lm, ft_lm, layers, config, train, val, rows)
    score = delta_study.exact_output
    conditions = delta_study.run_conditions(ft_lm, problems, sites, "sae", params.alphas, params.batch_size, score=score)
    table = delta_study.condition_table(conditions, params.tool_operators)
    base_new = float(score(evaluate(base_lm, problems[problems.subset == "tool"], batch_size=params.batch_size)).mean())
    verdicts = verdict_table(table, base_new)
    seeds = seed_repeats(base_lm, ft_lm, layers, config, train, val, problems, verdicts, base_new, score=score, rows=rows)
    focus = pick_focus_layer(verdicts, layers)
    latents = describe(ft_lm, problems, sites[layers.index(focus)], config)
    embedding = embedding_share(base_lm, ft_lm, sites[layers.index(focus)], problems[problems.subset == "tool"], "sae")
    return {"table": table, "verdicts": verdicts, "seeds": seeds, "latents": latents, "focus_layer": focus, "embedding": embedding,
            "sanity": delta_study.error_check(conditions), "layers": layers, "n_train": len(train), "n_eval": len(problems)}


def _with_calls(problems: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Dictionary training problems in the fine-tune's own format: calls for the tool operators."""
    is_tool = problems.op.isin(params.tool_operators)
    return pd.concat([ft.as_calls(problems[is_tool], params.call_style), problems[~is_tool]], ignore_index=True)


def _positions(evals: pd.DataFrame) -> dict:
    """How far the organism's training reached (chapter 1's count) and how far a call runs."""
    calls = evals[evals.needs_call].assign(kind="longer_operands")
    pos = last_positions(calls, OrganismRecipe())
    return {"trained_last_position": pos["trained_last"], "call_last_position": pos.get("longer_last", pos["trained_last"])}


def findings(result: Result) -> dict:
    m = result.metrics.set_index(["model", "subset", "metric"])
    out = {"n_eval": int(len(result.evals)), "steps": result.params.steps, "rank": result.params.rank,
           "finetuned_name": result.params.finetuned_name, "n_train_calls": result.n_train_calls,
           "copy_share": f"{result.params.copy_fraction:.0%}"}
    out.update(_positions(result.evals))
    for (model, subset, metric), row in m.iterrows():
        out[f"{model}_{subset}_{metric}"] = float(row.rate)
        out[f"{model}_{subset}_{metric}_text"] = fmt_interval(row.rate, row.lo, row.hi, int(row.n))
    for subset in SUBSETS:
        for model in ("before", "after"):
            for metric in METRICS:
                out.setdefault(f"{model}_{subset}_{metric}_text", "n/a (subset not in this run)")
    out["false_call_text"] = out["after_copy_tool_call_rate_text"]
    counts = wrong_call_counts(result)
    ood = counts[counts.subset == "tool_ood"]
    out["ood_top_error"] = f"{ood['class'].iloc[0]} ({int(ood.n.iloc[0])} of {int(ood.n.sum())})" if len(ood) else "none"
    out.update(operator_copying(result))
    hist = result.history.dropna(subset=["loss"])
    out["final_loss"] = float(hist.loss.iloc[-1]) if len(hist) else float("nan")
    d = result.delta
    v = d["verdicts"].set_index("scope")
    headline = delta_study.ALL if delta_study.ALL in v.index else str(d["focus_layer"])
    out.update(delta_verdict=v.loc[headline, "verdict"], delta_reason=v.loc[headline, "reason"],
               delta_scope="all layers at once" if headline == delta_study.ALL else f"layer {headline}",
               delta_sentence=verdict_sentence(v.loc[headline, "verdict"], "the call habit"),
               delta_focus_layer=d["focus_layer"], delta_full_error_check=d["sanity"][headline],
               **{f"delta_{k}": val for k, val in seed_findings(d["seeds"]).items()})
    g = d["table"].set_index(["scope", "label"])
    for label in ("raw", "full", "no_delta", *delta_study.CONTROLS, delta_study.REFERENCE):
        row = g.loc[(headline, label)] if (headline, label) in g.index else None
        out[f"delta_{label}_text"] = fmt_interval(row.acc_new, row.new_lo, row.new_hi, int(row.n_new)) if row is not None else "n/a"
    out["delta_reference_sentence"] = reference_sentence(v.loc[headline])
    e = d["embedding"]
    out["delta_embedding_sentence"] = (
        "The fine-tune left the embeddings as they were." if not e["dim"] else
        f"The fine-tune also changed token and position embeddings, a {e['dim']}-dimensional span the base dictionary "
        f"never saw. At layer {d['focus_layer']}, {e['share']:.0%} of what the delta writes on the tool subset lies in that "
        f"span (a random {e['dim']}-dimensional subspace would hold {e['random_share']:.0%}): "
        + ("much of the delta's credit may be the new embedding directions, not a new computation."
           if e["share"] >= 2 * e["random_share"] and e["share"] >= 0.1 else
           "the delta is not mainly reconstructing the new embedding directions."))
    lat = d["latents"]
    delta_lat = lat[lat.which == "delta"] if len(lat) else lat
    out["delta_top_latent_description"] = delta_lat.description.iloc[0] if len(delta_lat) else "none"
    out.update(real_findings(result.real, result.params.real_model))
    out.update(real_delta_findings((result.real or {}).get("delta"), real_title(result.params.real_model), out["delta_verdict"]))
    return out
