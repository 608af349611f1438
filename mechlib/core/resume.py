"""Teacher-forced scores of many runs that differ only from one block on: the blocks
before it run once, and every scoring pass resumes from their output.

A delta test splices dictionaries into two late layers of a pretrained model, ten times over
(one run per condition), and weight patching swaps one block at a time. Both leave every
block before the first changed one as it was, so recomputing those blocks on every pass is
waste: on Gemma 3 270M, whose studied layers sit two thirds of the way up, most of it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from .blocks import unembed_residual
from .evaluate import teacher_forced_batches


class Resumed:
    """The residual stream entering each block of ``starts``, for every teacher-forced
    batch of ``problems`` (prompt + target), computed once with the model's own blocks and
    no hooks. :meth:`scores` resumes from there."""

    def __init__(self, model, problems: pd.DataFrame, starts: Sequence[int], batch_size: int = 32):
        self.model, self.problems = model, problems.reset_index(drop=True)
        self.starts = sorted(set(starts))
        self.batches: list[tuple] = []
        prompts, targets = self.problems.prompt.tolist(), self.problems.target.tolist()
        with torch.inference_mode():
            for idx, tokens, plen, tlen in teacher_forced_batches(model, prompts, targets, batch_size):
                # prompts here are never padded: an explicit all-ones mask, not the tokenizer's guess
                residual, _, shortformer, mask = model.input_to_embed(tokens, attention_mask=torch.ones_like(tokens))
                at = {}
                for i in range(max(self.starts) + 1):
                    if i in self.starts:
                        at[i] = residual
                    residual = model.blocks[i](residual, shortformer_pos_embed=shortformer, attention_mask=mask)
                self.batches.append((idx, tokens[:, plen:], plen, tlen, at, shortformer, mask))

    @torch.inference_mode()
    def scores(self, start: int, blocks: Sequence[torch.nn.Module] | None = None) -> pd.DataFrame:
        """``answer_loss`` (mean cross-entropy over the target tokens) and ``tf_correct``
        (every target token is the top choice) per problem, running ``blocks`` (default: the
        model's own from ``start`` on; hooks set on the model fire) after the stored residual
        at ``start``, then the model's final norm and unembedding at the target positions only."""
        if start not in self.starts:
            raise ValueError(f"start {start} was not stored; stored: {self.starts}")
        blocks = list(self.model.blocks[start:]) if blocks is None else list(blocks)
        n = len(self.problems)
        loss, correct = np.zeros(n), np.zeros(n, dtype=bool)
        for idx, target, plen, tlen, at, shortformer, mask in self.batches:
            residual: Float[torch.Tensor, "batch seq d_model"] = at[start]
            for block in blocks:
                residual = block(residual, shortformer_pos_embed=shortformer, attention_mask=mask)
            logits: Float[torch.Tensor, "batch tlen d_vocab"] = unembed_residual(self.model, residual[:, plen - 1 : plen + tlen - 1]).float()
            tgt: Int[torch.Tensor, "batch tlen"] = target
            loss[idx] = (-logits.log_softmax(-1).gather(-1, tgt[..., None])[..., 0].mean(1)).cpu().numpy()
            correct[idx] = (logits.argmax(-1) == tgt).all(1).cpu().numpy()
        return pd.DataFrame({"answer_loss": loss, "tf_correct": correct})

    def splice(self, model, problems: pd.DataFrame, hooks: list, batch_size: int | None = None) -> pd.DataFrame:
        """:func:`mechlib.core.sae.splice_scores` on the stored problems, resumed at the first
        stored block: every hook must sit in that block or later."""
        if model is not self.model or len(problems) != len(self.problems):
            raise ValueError("Resumed.splice scores the model and the problems it stored, and no others")
        start = self.starts[0]
        early = [name for name, _ in hooks if not name.startswith("blocks.") or int(name.split(".")[1]) < start]
        if early:
            raise ValueError(f"hooks {early} act before block {start}, where every pass resumes")
        with model.hooks(fwd_hooks=hooks):
            scores = self.scores(start)
        res = self.problems.copy()
        res["output"] = ""  # nothing decoded
        res["correct"] = scores.tf_correct.to_numpy()
        res["answer_loss"] = scores.answer_loss.to_numpy()
        return res
