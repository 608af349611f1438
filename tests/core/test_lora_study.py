"""Chapter 3's pretrained-model part: a LoRA study on a small random Llama-shaped model with
SmolLM2's tokenizer, and the placement against the source's ranges on hand-made answers."""
import pandas as pd
import pytest

from mechlib.core import data, lora
from mechlib.core.cache import finetuned_dir
from mechlib.core.lora_study import AFTER, BEFORE_BARE, BEFORE_FEWSHOT, CONDITIONS, RealLoraConfig, against_source, paired, study


@pytest.fixture(scope="module")
def tiny_study(llama_shaped_dir, tmp_path_factory):
    from tests.chapters.test_chapters import cache_at

    config = RealLoraConfig(model=str(llama_shaped_dir), steps=2, batch_size=4, n_per_cell=3, curve_per_cell=2,
                            difficulties=("1x1", "1x2"), eval_batch=16)
    with cache_at(tmp_path_factory.mktemp("lora-study-cache")):
        out = study(config)
        held = lora.load_heldout(finetuned_dir(out["name"]))
        yield config, out, held


def test_every_condition_scores_the_same_heldout_problems(tiny_study):
    config, out, held = tiny_study
    res = out["results"]
    assert list(dict.fromkeys(res.model)) == list(CONDITIONS)
    items = [res[res.model == c].sort_values("item")[["a", "op", "b"]].to_numpy().tolist() for c in CONDITIONS]
    assert items[0] == items[1] == items[2] and len(items[0]) == 12  # 3 per cell, 2 operators x 2 difficulties
    held_keys = {data.pair_key(a, op, b) for a, op, b in zip(held.a, held.op, held.b)}
    assert all(data.pair_key(a, op, b) in held_keys for a, op, b in items[0])  # never trained on, in either order
    fewshot = res[res.model == BEFORE_FEWSHOT].prompt
    assert fewshot.str.count("\n").eq(3).all() and not res[res.model != BEFORE_FEWSHOT].prompt.str.contains("\n").any()
    assert out["curve_sizes"] == {"heldout_acc_new": 4, "heldout_acc_old": 4}
    assert out["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert paired(res, AFTER, BEFORE_BARE, ("*",))["n"] == 6
    assert out["where"].startswith("the CPU with ")  # recorded by the training run, not guessed by the page


def test_the_cache_name_follows_the_recipe(tiny_study):
    config, out, _ = tiny_study
    assert out["name"] == config.name()
    assert RealLoraConfig(model=config.model, steps=3).name() != RealLoraConfig(model=config.model, steps=2).name()


def _answers(cells: dict) -> pd.DataFrame:
    rows = []
    for (difficulty, condition), (right, n) in cells.items():
        rows += [{"op": "*", "difficulty": difficulty, "model": condition, "correct": i < right} for i in range(n)]
    return pd.DataFrame(rows)


def test_placement_follows_the_stated_rule():
    placed = against_source(_answers({("1x1", BEFORE_FEWSHOT): (70, 100), ("1x1", AFTER): (90, 100),
                                       ("2x2", BEFORE_FEWSHOT): (0, 100), ("2x2", AFTER): (80, 100)}))
    got = {(r.difficulty, r.stage): (r.placement, r["interval overlaps"]) for _, r in placed.iterrows()}
    assert got == {("1x1", "before"): ("inside", "yes"), ("1x1", "after"): ("below", "no"),  # 90% [82.6, 94.5] < 95%
                   ("2x2", "before"): ("inside", "yes"), ("2x2", "after"): ("above", "no")}  # 80% [71.1, 86.7] > 60%
    few = against_source(_answers({("1x1", AFTER): (10, 12)}))
    assert few["enough items"].iloc[0].startswith("no") and len(few) == 1
