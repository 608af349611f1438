"""Benchmark chapter 4's dictionary training against the streaming it replaced, in one run.

Same organism, same training problems (chapter 4's defaults), one torch thread. It measures:

* activation rows for one layer: ``ActivationBuffer`` (re-runs the model on every pass) against
  ``collect_rows`` once for every layer plus ``shuffled_batches`` per pass;
* delta training: six deltas sharing a frozen base, the base's reconstruction computed per
  delta (the old loop) against once per minibatch (``train_dictionaries`` now), same weights.

Prints each pair's seconds and ``old / new: N.NNx`` (above 1: the new path is faster).
"""
from __future__ import annotations

import argparse
import time

import torch

from mechlib.core import data, sae
from mechlib.core.models import load_model


def old_train(modules, batches, lr: float = 3e-3):
    """The previous loop: every delta recomputes the frozen base on every batch."""
    opts = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr) for m in modules]
    for x, y in batches:
        for module, opt in zip(modules, opts):
            recon, _ = module(x)
            loss = (recon - y).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-tokens", type=int, default=60000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model("arith-organism", device="cpu")
    train = data.make_problems(["-", "+"], ["1x1", "1x2", "2x2"], 600, "bare", seed=0).to_pandas()
    layer_names = [sae.sites("sae", layer)[0] for layer in range(model.cfg.n_layers)]
    name = layer_names[2]

    t = time.perf_counter()
    n_old = sum(len(x) for x, _ in sae.ActivationBuffer(model, train, name, name, args.n_tokens, 512, 8192, seed=0))
    old_rows = time.perf_counter() - t
    t = time.perf_counter()
    rows, _ = sae.collect_rows(model, train, layer_names)
    n_new = sum(len(x) for x, _ in sae.shuffled_batches(rows[name], rows[name], args.n_tokens, 512, seed=0))
    new_rows = time.perf_counter() - t
    assert n_old == n_new == args.n_tokens
    print(f"rows for one layer: ActivationBuffer {old_rows:.2f} s; collect once (all {len(layer_names)} layers) + reshuffle "
          f"{new_rows:.2f} s; old / new: {old_rows / new_rows:.2f}x")

    x = rows[name]
    base = sae.Dictionary(x.shape[1], x.shape[1], 256, "topk", 16, seed=0).requires_grad_(False)

    def deltas():
        return [sae.DeltaDictionary(base, sae.Dictionary(x.shape[1], x.shape[1], w, "topk", k, seed=i))
                for i, (w, k) in enumerate((w, k) for w in (32, 64, 128) for k in (4, 8))]

    old, new = deltas(), deltas()
    t = time.perf_counter()
    old_train(old, sae.shuffled_batches(x, x, args.n_tokens, 512, seed=1))
    old_s = time.perf_counter() - t
    t = time.perf_counter()
    sae.train_dictionaries(new, sae.shuffled_batches(x, x, args.n_tokens, 512, seed=1))
    new_s = time.perf_counter() - t
    same = all(torch.allclose(a.delta.W_dec, b.delta.W_dec, atol=1e-5) for a, b in zip(old, new))
    print(f"six deltas: base per delta {old_s:.2f} s; base once per batch {new_s:.2f} s; old / new: {old_s / new_s:.2f}x; "
          f"same weights: {same}")


if __name__ == "__main__":
    main()
