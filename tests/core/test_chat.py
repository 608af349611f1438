"""The chat format: the reading rule on hand-made replies, and a chat-templated model scored
on the same problems as the other formats (SmolLM2's tokenizer on a small random model)."""
import pandas as pd
import pytest

from mechlib.core import chat, format_study


@pytest.mark.parametrize("reply, answer", [
    ("3 + 8 = 11", 11),
    ("9 times 9 is 81.", 81),
    ('The answer is "0".', 0),
    ("To solve this problem, we need to find the sum of 3 and 8. 3 + 8 = 11", 11),
    ("To find 7 times 8, you multiply, which gives you 56.", 56),
    ("123 + 456 equals 579 in this context.", 579),
    ("The total is 1,234.", 1234),
    ("12 + 92 = 12 * 10 + 92", 12),  # the first number after the first marker, right or not
    ("This is the sum: 11", None),  # 'is' followed by a word: no answer there, and no other marker
    ("To solve this problem, we need to find the difference between", None),
    ("", None),
])
def test_the_reading_rule_on_hand_made_replies(reply, answer):
    assert chat.reply_answer(reply) == answer


def test_replies_are_scored_and_classed_by_the_answer_read_from_them():
    df = pd.DataFrame({"a": [3, 9, 5, 4], "op": ["+", "*", "-", "+"], "b": [8, 9, 1, 4]})
    out = chat.score_replies(df, ["3 + 8 = 11", "9 times 9 is 18.", "To solve this problem", " "])
    assert out.correct.tolist() == [True, False, False, False]
    assert out.error.tolist()[2:] == ["format_only", "empty"] and out.error[1] == "wrong_operation"  # 9+9 = 18


def test_a_chat_templated_model_is_asked_in_its_template_and_a_model_without_one_is_not(llama_shaped_dir, gemma_shaped_dir):
    from mechlib.core.models import load_model

    config = format_study.FormatConfig(models=(str(llama_shaped_dir),), formats=("fewshot", "chat"), operators=("+",),
                                       difficulties=("1x1", "1x2"), n_per_cell=6, n_shared=4, chat_tokens=3, batch_size=8)
    problems = format_study.problems_for(config)
    model, _ = load_model(str(llama_shaped_dir), device="cpu")
    assert chat.has_chat(model.tokenizer)
    scored = format_study.score_job(config, (str(llama_shaped_dir), "chat", -1), problems, model)
    assert len(scored) == 4 and set(scored.difficulty) == {"1x1"} and scored["shared"].all()
    assert all(p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") for p in scored.prompt)
    assert all(chat.request(a, "+", b) in p for a, b, p in zip(scored.a, scored.b, scored.prompt))
    gemma, _ = load_model(str(gemma_shaped_dir), device="cpu")
    assert not chat.has_chat(gemma.tokenizer)  # Gemma 3 270M is the base release: no chat template
    assert format_study.score_job(config, (str(gemma_shaped_dir), "chat", -1), problems, gemma) is None
    with pytest.raises(ValueError, match="chat_tokens"):
        format_study.FormatConfig(models=("x",), chat_tokens=0)
    with pytest.raises(ValueError, match="headline 'chat'"):
        format_study.FormatConfig(models=("x",), headline="chat")
