"""Benchmark the evaluator against what a user would pick instead, in one run.

Same model weights, same problems, one torch thread (set with --threads), runs paired and
interleaved, medians of --repeats. It measures, per batch size:

* the limit: one bare teacher-forced forward over the same prompt + answer tokens;
* ``evaluate``: mechlib's batched, KV-cached greedy decoding;
* Hugging Face ``generate`` on the same weights, left-padded, greedy, batched;

checks that all answers agree, then prints ``eval / forward limit: N.NNx`` and
``HF generate / eval: N.NNx`` (above 1: mechlib is faster), and as its last line the speed-up
over a per-example TransformerLens ``generate`` loop, ``eval speedup: N.Nx``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechlib.core import data
from mechlib.core.evaluate import encode, encode_targets, generate_one_by_one, greedy_decode
from mechlib.core.models import load_hf, load_model


def bare_forward(model, prompts, targets, batch_size: int) -> None:
    """The limit: the model's forward over prompt + answer (+ EOS), batched by length."""
    from mechlib.core.evaluate import teacher_forced_batches

    with torch.inference_mode():
        for _, tokens, _, _ in teacher_forced_batches(model, prompts, [t + "\n" for t in targets], batch_size):
            model(tokens)


def hf_generate(hf, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> list[str]:
    """What a user would write with transformers: left padding, greedy, batched."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    outs: list[str] = []
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[s : s + batch_size], return_tensors="pt", padding=True)
            gen = hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1] :]
            for row in new.tolist():
                cut = next((j for j, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
                outs.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return outs


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="arith-organism")
    parser.add_argument("--n-per-cell", type=int, default=400)
    parser.add_argument("--batch-sizes", default="64,512,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-problems", type=int, default=300, help="problems for the slow per-example loop")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model, _ = load_model(args.model, device="cpu")
    hf, tokenizer, _ = load_hf(args.model, device="cpu")
    ds = data.make_problems(["+", "-", "*"], ["1x1", "1x2", "2x2"], args.n_per_cell, seed=0)
    prompts, targets = list(ds["prompt"]), list(ds["target"])
    max_new = max(len(t) for t in encode_targets(model, targets)) + 1
    assert max(len(p) for p in encode(model, prompts)) + max_new <= model.cfg.n_ctx
    print(f"model {args.model}, {len(prompts)} problems, {args.threads} torch thread(s), max_new_tokens {max_new}, "
          f"medians of {args.repeats} paired runs")

    ratios_limit, ratios_hf = [], []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        ours = greedy_decode(model, prompts, max_new, batch_size=bs)
        theirs = hf_generate(hf, tokenizer, prompts, max_new, bs)
        mismatches = sum(a != b for a, b in zip(ours, theirs))
        if mismatches:
            raise SystemExit(f"batch {bs}: evaluate and HF generate disagree on {mismatches} answers")
        t_fwd, t_eval, t_hf = [], [], []
        for _ in range(args.repeats):  # interleaved, so load on the machine hits all three alike
            t_fwd.append(median_time(lambda: bare_forward(model, prompts, targets, bs), 1))
            t_eval.append(median_time(lambda: greedy_decode(model, prompts, max_new, batch_size=bs), 1))
            t_hf.append(median_time(lambda: hf_generate(hf, tokenizer, prompts, max_new, bs), 1))
        f, e, h = (statistics.median(t) for t in (t_fwd, t_eval, t_hf))
        ratios_limit.append(e / f)
        ratios_hf.append(h / e)
        print(f"batch {bs:5d}: bare forward {f:6.3f} s | evaluate {e:6.3f} s | HF generate {h:6.3f} s | "
              f"eval / forward {e / f:5.2f}x | HF generate / eval {h / e:5.2f}x | answers identical")

    loop_prompts = prompts[: args.loop_problems]
    start = time.perf_counter()
    batched = greedy_decode(model, loop_prompts, max_new)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    looped = generate_one_by_one(model, loop_prompts, max_new)
    t_loop = time.perf_counter() - start
    if batched != looped:
        raise SystemExit("batched and per-example answers differ")
    print(f"eval / forward limit: {max(ratios_limit):.2f}x (worst batch size)")
    print(f"HF generate / eval: {min(ratios_hf):.2f}x (worst batch size; above 1 means mechlib is faster)")
    print(f"per-example TL generate: {len(loop_prompts) / t_loop:.1f} problems/s; batched: {len(loop_prompts) / t_batched:.1f} problems/s")
    print(f"eval speedup: {t_loop / t_batched:.1f}x")


if __name__ == "__main__":
    main()
