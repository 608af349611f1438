"""Benchmark the evaluator against what a user would pick instead, in one run.

Same model weights, same problems, one torch thread (--threads; on a shared 2-core machine
one thread per process is fastest, and the book runs its chapters the same way), runs
paired and interleaved, medians of --repeats. Per model, prompt format and batch size:

* the limit: one forward over what the decoder must see (with a shared prefix computed
  once, the suffix plus the answer tokens), logits at the last position only;
* ``evaluate``: mechlib's batched greedy decoding (shared prefix, preallocated cache);
* Hugging Face ``generate`` on the same weights, left-padded, greedy, batched, stopping at
  the same tokens: what a user would write (HF / limit bounds what any exact decoder could
  gain over it: Gemma 3's 262,144-row unembedding at every answer token is in both);

and checks that the answers agree on every problem. Real models: SmolLM2-135M-Instruct and
Gemma 3 270M (dequantized GGUF), few-shot (3 worked examples of the operator) and bare
prompts, batch 64 and 256, plus the peak resident memory of ``evaluate`` alone (a child
process holding only the TransformerLens model). The organism: bare prompts, batch 64 to
4096. Last lines: ``real eval / HF generate``, ``real eval / forward limit`` (worst cases)
and the speed-up over a per-example TransformerLens ``generate`` loop, ``eval speedup``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechlib.core import data, decode
from mechlib.core.blocks import BlockOrder
from mechlib.core.evaluate import encode, encode_targets, generate_one_by_one, greedy_decode
from mechlib.core.fewshot import with_examples
from mechlib.core.models import load_hf, load_model

REAL = ("smollm2-135m-instruct", "gemma-3-270m")


def bare_forward(model, prompts, targets, batch_size: int) -> None:
    """The limit: the model's forward over prompt + answer (+ EOS), batched by length."""
    from mechlib.core.evaluate import teacher_forced_batches

    with torch.inference_mode():
        for _, tokens, _, _ in teacher_forced_batches(model, prompts, [t + "\n" for t in targets], batch_size):
            model(tokens)


def prefix_limit(model, prompts, outputs, batch_size: int, groups=None) -> None:
    """The real-model limit: the shared prefix once per group, then one teacher-forced
    forward over each problem's suffix and answer tokens, with logits at the positions the
    decoder needs them (the last prompt token and each answer token): the same logits as
    decoding, in one pass instead of one per token."""
    ids = encode(model, prompts)
    answers = [model.tokenizer(o, add_special_tokens=False)["input_ids"] for o in outputs]
    forward = BlockOrder(model, range(model.cfg.n_layers))
    rows = [p + a for p, a in zip(ids, answers)]
    group = decode.group_index(groups, len(ids))
    with torch.inference_mode():
        prefixes = decode.group_prefixes(forward, ids, group, True)
        for idx in decode.buckets([(g, len(p), len(a)) for g, p, a in zip(group, ids, answers)], batch_size):
            n, prefix = prefixes[group[idx[0]]]
            tokens = torch.tensor([rows[i] for i in idx])
            cache = decode.slab_cache(model, len(forward.order), len(idx), tokens.shape[1], prefix) if prefix else None
            forward(tokens[:, n:], cache=cache, keep=slice(len(ids[idx[0]]) - n - 1, None))


def hf_generate(hf, tokenizer, prompts, max_new_tokens: int, batch_size: int, stops=None) -> list[str]:
    """What a user would write with transformers: left padding, greedy, batched, stopping
    at ``stops`` (EOS by default; the evaluator's stop tokens when comparing with it)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stops = sorted(stops or {tokenizer.eos_token_id})
    outs: list[str] = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[s : s + batch_size], return_tensors="pt", padding=True)
            gen = hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=stops)
            new = gen[:, enc["input_ids"].shape[1] :]
            for row in new.tolist():
                cut = next((j for j, t in enumerate(row) if t in stops or t == tokenizer.pad_token_id), len(row))
                outs.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return outs


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """This process's peak resident memory since the last :func:`reset_peak` (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def real_problems(model, n: int, fmt: str):
    """n problems over + - x and 1x2, 2x2 (bare prompts), few-shot with 3 worked examples of
    the operator: (prompts, targets, groups: the examples block, None for bare prompts)."""
    ds = data.make_problems(list(data.OPERATORS), ["1x2", "2x2"], max(1, n // 6), seed=0)
    if fmt == "fewshot":
        ds = with_examples(ds, k=3, seed=0)
        return list(ds["prompt"]), list(ds["target"]), list(ds["shots"])
    return list(ds["prompt"]), list(ds["target"]), None


def peak_child(name: str, n: int, batch: int) -> None:
    """In a child process: load only the TransformerLens model, then the peak resident memory
    of evaluate's decoding of the few-shot problems at ``batch``, and of the model alone."""
    model, _ = load_model(name, device="cpu")
    prompts, targets, groups = real_problems(model, n, "fewshot")
    max_new = max(len(t) for t in encode_targets(model, targets)) + 1
    reset_peak()
    loaded = peak_rss_mb()
    greedy_decode(model, prompts, max_new, batch_size=batch, groups=groups)
    print(f"PEAK {loaded:.0f} {peak_rss_mb():.0f}")


def timed_three(fns, repeats):
    """Median seconds of each function, run interleaved ``repeats`` times."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t.append(median_time(fn, 1))
    return [statistics.median(t) for t in times]


def real_section(name: str, args, worst: dict) -> None:
    model, _ = load_model(name, device="cpu")
    hf, tokenizer, _ = load_hf(name, device="cpu")
    stops = decode.stop_ids(model.tokenizer)
    for fmt in ("fewshot", "bare"):
        prompts, targets, groups = real_problems(model, args.real_n, fmt)
        max_new = max(len(t) for t in encode_targets(model, targets)) + 1
        for bs in (64, 256):
            ours = greedy_decode(model, prompts, max_new, batch_size=bs, groups=groups)
            theirs = hf_generate(hf, tokenizer, prompts, max_new, bs, stops)
            mismatches = [(p, a, b) for p, a, b in zip(prompts, ours, theirs) if a != b]
            if mismatches:
                raise SystemExit(f"{name} {fmt} batch {bs}: evaluate and HF generate disagree on {len(mismatches)} "
                                 f"answers, e.g. {mismatches[:3]}")
            f, e, h = timed_three([lambda: prefix_limit(model, prompts, ours, bs, groups),
                                   lambda: greedy_decode(model, prompts, max_new, batch_size=bs, groups=groups),
                                   lambda: hf_generate(hf, tokenizer, prompts, max_new, bs, stops)], args.repeats)
            worst["hf"] = min(worst.get("hf", 1e9), h / e)
            worst["limit"] = max(worst.get("limit", 0), e / f)
            worst["bound"] = min(worst.get("bound", 1e9), h / f)
            print(f"{name:22s} {fmt:7s} batch {bs:3d}: limit {f:6.2f} s | evaluate {e:6.2f} s ({e / len(prompts) * 1000:5.1f} ms/problem) | "
                  f"HF generate {h:6.2f} s | HF / eval {h / e:4.2f}x | eval / limit {e / f:4.2f}x | HF / limit {h / f:4.2f}x | "
                  f"{len(prompts)} answers identical",
                  flush=True)


def real_peak(name: str, args) -> None:
    """Peak memory of evaluate alone, in a child process that holds only the TL model."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--peak", name, "--real-n", str(args.real_n), "--threads", str(args.threads)],
                         capture_output=True, text=True, check=True).stdout
    loaded, peak = (float(x) for x in out.split("PEAK")[1].split())
    print(f"{name:22s} peak resident memory, evaluate few-shot at batch 256: {peak / 1024:.2f} GB (model loaded: {loaded / 1024:.2f} GB)",
          flush=True)


def organism_section(args) -> dict:
    model, _ = load_model(args.model, device="cpu")
    hf, tokenizer, _ = load_hf(args.model, device="cpu")
    ds = data.make_problems(["+", "-", "*"], ["1x1", "1x2", "2x2"], args.n_per_cell, seed=0)
    prompts, targets = list(ds["prompt"]), list(ds["target"])
    max_new = max(len(t) for t in encode_targets(model, targets)) + 1
    assert max(len(p) for p in encode(model, prompts)) + max_new <= model.cfg.n_ctx
    print(f"model {args.model}, {len(prompts)} problems, {args.threads} torch thread(s), max_new_tokens {max_new}, "
          f"medians of {args.organism_repeats} paired runs", flush=True)
    ratios_limit, ratios_hf = [], []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        ours = greedy_decode(model, prompts, max_new, batch_size=bs)
        theirs = hf_generate(hf, tokenizer, prompts, max_new, bs)
        mismatches = sum(a != b for a, b in zip(ours, theirs))
        if mismatches:
            raise SystemExit(f"batch {bs}: evaluate and HF generate disagree on {mismatches} answers")
        f, e, h = timed_three([lambda: bare_forward(model, prompts, targets, bs),
                               lambda: greedy_decode(model, prompts, max_new, batch_size=bs),
                               lambda: hf_generate(hf, tokenizer, prompts, max_new, bs)], args.organism_repeats)
        ratios_limit.append(e / f)
        ratios_hf.append(h / e)
        print(f"batch {bs:5d}: bare forward {f:6.3f} s | evaluate {e:6.3f} s | HF generate {h:6.3f} s | "
              f"eval / forward {e / f:5.2f}x | HF generate / eval {h / e:5.2f}x | answers identical", flush=True)
    loop_prompts = prompts[: args.loop_problems]
    start = time.perf_counter()
    batched = greedy_decode(model, loop_prompts, max_new)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    looped = generate_one_by_one(model, loop_prompts, max_new)
    t_loop = time.perf_counter() - start
    if batched != looped:
        raise SystemExit("batched and per-example answers differ")
    print(f"eval / forward limit: {max(ratios_limit):.2f}x (organism, worst batch size)")
    print(f"HF generate / eval: {min(ratios_hf):.2f}x (organism, worst batch size; above 1 means mechlib is faster)")
    print(f"per-example TL generate: {len(loop_prompts) / t_loop:.1f} problems/s; batched: {len(loop_prompts) / t_batched:.1f} problems/s")
    return {"speedup": t_loop / t_batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="arith-organism")
    parser.add_argument("--n-per-cell", type=int, default=400)
    parser.add_argument("--batch-sizes", default="64,512,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--organism-repeats", type=int, default=9,
                        help="the organism's runs take half a second each, so their medians need more of them")
    parser.add_argument("--loop-problems", type=int, default=300, help="problems for the slow per-example loop")
    parser.add_argument("--real-n", type=int, default=256, help="problems per real-model format")
    parser.add_argument("--real", default=",".join(REAL), help="real models to bench ('' for none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peak", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.peak:
        return peak_child(args.peak, args.real_n, 256)
    organism = organism_section(args)
    worst: dict = {}
    for name in [m for m in args.real.split(",") if m]:
        real_section(name, args, worst)
        real_peak(name, args)
    if worst:
        print(f"real eval / HF generate: {worst['hf']:.2f}x (worst over models, formats and batch sizes; above 1: mechlib is faster)")
        print(f"real eval / forward limit: {worst['limit']:.2f}x (worst case)")
        print(f"real HF generate / forward limit: {worst['bound']:.2f}x (worst case: the most any exact greedy decoder "
              f"on these weights could gain over HF generate)")
    print(f"eval speedup: {organism['speedup']:.1f}x")


if __name__ == "__main__":
    main()
