import pytest
from datasets import Dataset

from mechlib.core import data
from mechlib.core.hub import HubUnavailableError


def test_same_seed_same_problems_and_cells_independent_of_other_cells():
    a = data.make_problems(["+", "-"], ["1x2", "2x2"], 20, seed=3).to_pandas()
    b = data.make_problems(["+", "-"], ["1x2", "2x2"], 20, seed=3).to_pandas()
    assert a.equals(b)
    only = data.make_problems(["-"], ["2x2"], 20, seed=3).to_pandas()
    sub = a[(a.op == "-") & (a.difficulty == "2x2")].reset_index(drop=True)
    assert sub.equals(only)
    assert not a.equals(data.make_problems(["+", "-"], ["1x2", "2x2"], 20, seed=4).to_pandas())


def test_rows_are_consistent_and_typed():
    ds = data.make_problems(["+", "-", "*"], ["1x1", "1x2", "3x3"], 30, seed=0)
    assert ds.features == data.FEATURES
    for r in ds:
        assert r["answer"] == data.apply_op(r["a"], r["op"], r["b"])
        assert r["prompt"] == f"{r['a']}{r['op']}{r['b']}="
        assert r["target"] == str(r["answer"])
        assert r["difficulty"] == data.difficulty_label(len(str(r["a"])), len(str(r["b"])))
        if r["op"] == "-":
            assert r["answer"] >= 0


def test_cells_hold_distinct_problems_and_small_cells_give_all():
    ds = data.make_problems(["+", "-"], ["1x1"], 1000, seed=0).to_pandas()
    assert (ds.op == "+").sum() == 100  # every ordered pair 0..9 x 0..9
    assert (ds.op == "-").sum() == 55  # a >= b
    assert not ds.duplicated(["a", "op", "b"]).any()
    big = data.make_problems(["*"], ["9x9"], 50, seed=1).to_pandas()
    assert len(big) == 50 and big.a.between(10**8, 10**9 - 1).all()


def test_negative_subtraction_on_request():
    ds = data.make_problems(["-"], ["2x2"], 200, seed=0, allow_negative=True).to_pandas()
    assert (ds.answer < 0).any()


def test_qa_format():
    prompt, target = data.format_prompt(7, "*", 8, "qa")
    assert (prompt, target) == ("Q: What is 7 times 8? A:", " 56")


@pytest.mark.parametrize(
    "a,op,b,carries", [(15, "+", 27, 1), (999, "+", 1, 3), (10, "+", 20, 0), (52, "-", 27, 1), (100, "-", 1, 2), (7, "*", 8, 1), (12, "*", 3, 0)]
)
def test_count_carries(a, op, b, carries):
    assert data.count_carries(a, op, b) == carries


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(operators=["/"]), "operators"),
        (dict(operators="+"), "operators"),
        (dict(difficulties=["2by2"]), "'AxB'"),
        (dict(difficulties=["0x1"]), "'AxB'"),
        (dict(n_per_cell=0), "n_per_cell"),
        (dict(prompt_format="latex"), "prompt_format"),
    ],
)
def test_bad_arguments_fail_fast_naming_the_parameter(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        data.make_problems(**kwargs)


def test_save_and_load_parquet_and_disk(tmp_path):
    ds = data.make_problems(["+"], ["1x2"], 10, seed=0)
    for path in (tmp_path / "p.parquet", tmp_path / "disk"):
        data.save_problems(ds, path)
        back = data.load_problems(path)
        assert back.features == data.FEATURES
        assert back.to_pandas().equals(ds.to_pandas())


def test_context_completion_rows_convert(tmp_path):
    hub_style = Dataset.from_list(
        [
            {"context": "Question: What is 98 plus 45?\nAnswer:", "completion": " 143"},
            {"context": "Question: What is 3 times 4?\nAnswer:", "completion": " 12"},
            {"context": "Question: What is (3 + 4) * 2?\nAnswer:", "completion": " 14"},
        ]
    )
    hub_style.save_to_disk(str(tmp_path / "copy"))
    ds = data.load_problems(tmp_path / "copy")
    rows = ds.to_pandas()
    assert list(rows.answer) == [143, 12]
    assert list(rows.op) == ["+", "*"]
    assert rows.prompt[0].startswith("Question: What is 98 plus 45?")
    assert list(rows.prompt_format) == ["hub", "hub"]


def test_hub_dataset_name_fails_fast_offline(offline):
    with pytest.raises(HubUnavailableError, match="dataset='EleutherAI/arithmetic'.*save_to_disk"):
        data.load_problems("EleutherAI/arithmetic", "arithmetic_2da")


def test_exclude_pairs_in_both_orders():
    ds = data.make_problems(["+"], ["2x2"], 3000, seed=0)
    first = ds[0]
    held = data.make_problems(["+"], ["2x2"], 1, seed=0).map(lambda r: {"a": r["b"], "b": r["a"]})
    kept = data.exclude_pairs(ds, held).to_pandas()
    both_orders = ds.to_pandas().query(f"(a == {first['a']} and b == {first['b']}) or (a == {first['b']} and b == {first['a']})")
    assert len(both_orders) >= 1
    assert len(kept) == len(ds) - len(both_orders)
    assert not ((kept.a == first["b"]) & (kept.b == first["a"])).any()


def test_unequal_cells_hold_both_operand_orders():
    ds = data.make_problems(["+"], ["1x2"], 500, seed=0).to_pandas()
    assert (ds.digits_a == 1).any() and (ds.digits_a == 2).any()
    assert set(ds.difficulty) == {"1x2"}
    sub = data.make_problems(["-"], ["1x2"], 500, seed=0).to_pandas()
    assert (sub.digits_a == 2).all() and (sub.answer >= 0).all()


def test_drawing_a_few_problems_from_a_huge_cell_is_fast_and_distinct():
    import time

    start = time.time()
    ds = data.make_problems(["*"], ["9x9", "3x3"], 500, seed=1)
    assert time.time() - start < 2
    pairs = list(zip(ds["a"], ds["op"], ds["b"], ds["difficulty"]))
    assert len(pairs) == len(set(pairs)) == 1000
    again = data.make_problems(["*"], ["9x9", "3x3"], 500, seed=1)
    assert list(again["a"]) == list(ds["a"])


def test_problem_count_is_bounded_in_the_library():
    with pytest.raises(ValueError, match="n_per_cell = 10000000.*1,000,000"):
        data.make_problems(["+"], ["9x9"], 10**7)


def test_single_jsonl_file_and_the_only_split_load(tmp_path):
    import json

    rows = [{"context": "Question: What is 98 plus 45?\nAnswer:", "completion": " 143"}]
    (tmp_path / "one.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert list(data.load_problems(tmp_path / "one.jsonl")["answer"]) == [143]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "test.jsonl").write_text((tmp_path / "one.jsonl").read_text())  # no split called 'validation'
    assert list(data.load_problems(folder)["answer"]) == [143]


def test_several_splits_are_listed(tmp_path):
    from datasets import DatasetDict

    ds = data.make_problems(["+"], ["1x1"], 3, seed=0)
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]; pass split="):
        data.load_problems(tmp_path / "dd")
    assert len(data.load_problems(tmp_path / "dd", split="test")) == 3


def test_a_cascade_is_a_carry_caused_by_a_carry():
    from mechlib.core.data import count_cascades

    assert count_cascades(99, 1) == 1 and count_cascades(95, 5) == 1 and count_cascades(45, 55) == 1
    assert count_cascades(55, 55) == 0  # two carries, each column carrying on its own
    assert count_cascades(19, 1) == 0 and count_cascades(12, 34) == 0 and count_cascades(999, 1) == 2
