"""Chapter 6's pretrained-model part: the tool fine-tune study on a small random
Gemma-shaped model (Gemma 3's tokenizer and 262,144-token vocabulary), end to end."""
import pandas as pd
import pytest

from mechlib.core import lora, tool_requests
from mechlib.core.cache import finetuned_dir
from mechlib.core.tool_study import AFTER, BEFORE_SHOWN, CONDITIONS, ToolLoraConfig, paired, study


@pytest.fixture(scope="module")
def tiny_tool_study(gemma_shaped_dir, tmp_path_factory):
    from tests.chapters.test_chapters import cache_at

    config = ToolLoraConfig(model=str(gemma_shaped_dir), steps=2, batch_size=4, n_per_operator=2, curve_per_cell=2, eval_batch=16)
    with cache_at(tmp_path_factory.mktemp("tool-study-cache")):
        out = study(config)
        held = lora.load_heldout(finetuned_dir(out["name"]))
        yield config, out, held


def test_every_condition_scores_the_same_requests_in_three_subsets(tiny_tool_study):
    config, out, held = tiny_tool_study
    a = out["answers"]
    assert list(dict.fromkeys(a.model)) == list(CONDITIONS)
    items = [a[a.model == c].sort_values("item")[["subset", "prompt"]].to_numpy().tolist() for c in CONDITIONS]
    assert items[0] == items[1] and len(items[0]) == 10  # 2 per operator in tool and tool_ood, 2 copies
    first = a[a.model == AFTER]
    assert first.groupby("subset").size().to_dict() == {"copy": 2, "tool": 4, "tool_ood": 4}
    trained = lora.splits(config.recipe())
    train_keys = tool_requests.keys(trained[0]) | tool_requests.keys(trained[2])
    scored = first[first.subset != "tool_ood"]
    assert not tool_requests.keys(scored) & train_keys and tool_requests.keys(scored) <= tool_requests.keys(held)
    assert set(first.template) & set(trained[0].template) == set()  # phrasings never trained on
    m = out["metrics"]
    assert set(m.metric) == {"tool_call_rate", "valid_tool_format_rate", "math_correct_rate"} and m.rate.between(0, 1).all()
    assert (m.groupby(["model", "subset"]).n.first().loc[AFTER] == [2, 4, 4]).all()
    assert paired(a, AFTER, BEFORE_SHOWN, "tool")["n"] == 4 and paired(a, AFTER, BEFORE_SHOWN, "copy")["n"] == 2
    assert a[a.model == BEFORE_SHOWN].prompt.equals(first.prompt.set_axis(a[a.model == BEFORE_SHOWN].index))  # the request, not the examples
    assert set(out["wrong_calls"]["class"]) <= {"no call", "truncated call", "malformed call", "wrong operator",
                                                "wrong operand copied", "other", "right call"}
    assert out["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert out["n_train"]["calls"] == len(trained[0]) and out["where"].startswith("the CPU with ")


def test_the_cache_name_follows_the_recipe(tiny_tool_study):
    config, out, _ = tiny_tool_study
    assert out["name"] == config.name() and "-lora-tool-" in out["name"]
    assert ToolLoraConfig(model=config.model, steps=3).name() != ToolLoraConfig(model=config.model, steps=2).name()


def _table(rates: dict) -> pd.DataFrame:
    from mechlib.core.stats import proportion

    rows = []
    for (subset, metric), (k, n) in rates.items():
        st = proportion([True] * k + [False] * (n - k))
        rows.append({"model": AFTER, "subset": subset, "metric": metric, "n": n, "rate": st["p"], "lo": st["lo"], "hi": st["hi"]})
    return pd.DataFrame(rows)


def test_the_verdict_applies_the_stated_rule():
    from mechlib.core.tool_study import verdict

    good = {("tool", "math_correct_rate"): (118, 120), ("copy", "tool_call_rate"): (0, 60)}
    assert verdict(_table({**good, ("tool_ood", "math_correct_rate"): (115, 120)})).startswith("learned, and carried")
    assert verdict(_table({**good, ("tool_ood", "math_correct_rate"): (90, 120)})).startswith("learned, but not")  # 75%
    assert verdict(_table({**good, ("copy", "tool_call_rate"): (6, 60)})) == "not shown to have learned"  # upper end > 10%
    assert verdict(_table({**good, ("tool", "math_correct_rate"): (100, 120)})) == "not shown to have learned"  # 83%, lo < 80%


def test_replies_decoded_in_two_phases_are_one_long_greedy_decode(llama_shaped_dir):
    """Replies that go on are the tokens of one long decode; the others stop at FIRST_TOKENS."""
    from mechlib.core.evaluate import greedy_decode
    from mechlib.core.models import load_model
    from mechlib.core.tool_scoring import FIRST_TOKENS
    from mechlib.core.tool_study import replies

    model, _ = load_model(str(llama_shaped_dir))
    reqs = tool_requests.ood_requests(("*", "/"), 3, seed=0)
    prompts, targets = reqs.prompt.tolist(), reqs.target.tolist()
    longest = max(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets) + 2
    assert longest > FIRST_TOKENS
    whole = greedy_decode(model, prompts, longest, 8, stop_at_newline=True)
    short = greedy_decode(model, prompts, FIRST_TOKENS, 8, stop_at_newline=True)
    assert replies(model, prompts, targets, 8, goes_on=lambda text: True) == whole
    assert replies(model, prompts, targets, 8, goes_on=lambda text: False) == short
    assert replies(model, prompts, targets, 8) == short  # a random model opens no call
    assert whole != short  # the test can tell the two apart
