"""Benchmark loading a real model: mechlib's ``load_model`` against transformers, in one run.

Each load runs in a fresh child process with one torch thread, from the cached checkpoint
(built first if missing), interleaved mechlib / transformers, median of --repeats. The child
reports its wall time for the load alone (imports excluded) and its peak resident memory.
Transformers is timed twice: ``AutoModelForCausalLM.from_pretrained`` on the same folder
(the model alone), and with ``AutoTokenizer`` as well (what ``load_model`` returns: a model
and its tokenizer). One line per model:

    load gemma-3-270m: mechlib 4.8 s / peak 1.0 GB; transformers 2.6 s / peak 0.4 GB (model), ...
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

REAL = ("smollm2-135m-instruct", "gemma-3-270m")

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
kind, name = sys.argv[1], sys.argv[2]
from mechlib.core import shipped
from mechlib.core.models import load_model
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = str(shipped.checkpoint_dir(shipped.shipped(name)))
start = time.perf_counter()
if kind == "mechlib":
    model, tokenizer = load_model(name, device="cpu")
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
else:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if kind == "transformers+tokenizer":
        AutoTokenizer.from_pretrained(folder)
    n_bytes = 0
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "param_gb": n_bytes / 1e9}))
"""

KINDS = ("mechlib", "transformers", "transformers+tokenizer")


def child(kind: str, name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(REAL))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name in args.models:
        child("mechlib", name)  # builds the checkpoint and the converted copy if missing; not timed
        runs = {k: [] for k in KINDS}
        for _ in range(args.repeats):
            for kind in KINDS:
                runs[kind].append(child(kind, name))
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("seconds", "peak_gb", "param_gb")} for k, v in runs.items()}
        m, t, tt = med["mechlib"], med["transformers"], med["transformers+tokenizer"]
        print(f"load {name}: mechlib {m['seconds']:.1f} s / peak {m['peak_gb']:.1f} GB; "
              f"transformers {t['seconds']:.1f} s / peak {t['peak_gb']:.1f} GB (model), "
              f"{tt['seconds']:.1f} s / peak {tt['peak_gb']:.1f} GB (model and tokenizer)", flush=True)
        print(f"  mechlib / transformers: {m['seconds'] / t['seconds']:.2f}x time (model alone), "
              f"{m['seconds'] / tt['seconds']:.2f}x (model and tokenizer); peak {m['peak_gb'] / m['param_gb']:.2f}x "
              f"the {m['param_gb']:.2f} GB of float32 parameters and buffers TransformerLens holds", flush=True)


if __name__ == "__main__":
    main()
