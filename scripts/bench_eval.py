"""Benchmark: batched greedy evaluation vs a per-example `generate` loop.

Same model, same problems, same run. Checks that both give the same answers, then prints
problems per second for each and, as its last line, ``eval speedup: N.Nx``.
"""
from __future__ import annotations

import argparse
import time

import torch

from mechlib import data
from mechlib.evaluate import generate_one_by_one, greedy_decode
from mechlib.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="arith-organism")
    parser.add_argument("--n-per-cell", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model, _ = load_model(args.model, device="auto")
    ds = data.make_problems(["+", "-", "*"], ["1x1", "1x2", "2x2", "3x3"], args.n_per_cell, seed=0)
    prompts = list(ds["prompt"])
    greedy_decode(model, prompts[:8], args.max_new_tokens)  # warm-up

    start = time.perf_counter()
    batched = greedy_decode(model, prompts, args.max_new_tokens)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    looped = generate_one_by_one(model, prompts, args.max_new_tokens)
    t_loop = time.perf_counter() - start

    mismatches = sum(a != b for a, b in zip(batched, looped))
    print(f"model {args.model}, {len(prompts)} problems, device {model.cfg.device}, {torch.get_num_threads()} threads")
    print(f"per-example generate: {len(prompts) / t_loop:9.1f} problems/s ({t_loop:.2f} s)")
    print(f"batched greedy:       {len(prompts) / t_batched:9.1f} problems/s ({t_batched:.2f} s)")
    print(f"answers identical: {mismatches == 0} ({mismatches} mismatches)")
    if mismatches:
        raise SystemExit("batched and per-example answers differ")
    print(f"eval speedup: {t_loop / t_batched:.1f}x")


if __name__ == "__main__":
    main()
