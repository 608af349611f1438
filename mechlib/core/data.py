"""Arithmetic problems as Hugging Face `datasets`: generate, save, load, convert.

A difficulty such as ``"1x2"`` means one operand has 1 digit and the other 2, in either
order (1-digit numbers include 0). Generation is deterministic in (seed, operator, difficulty).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Value, load_dataset, load_from_disk

from .hub import require_hub

OPERATORS = ("+", "-", "*")
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
PROMPT_FORMATS = ("bare", "qa")
MAX_DIGITS = 9

FEATURES = Features(
    {
        "a": Value("int64"),
        "b": Value("int64"),
        "op": Value("string"),
        "answer": Value("int64"),
        "digits_a": Value("int32"),
        "digits_b": Value("int32"),
        "difficulty": Value("string"),
        "carries": Value("int32"),
        "prompt": Value("string"),
        "target": Value("string"),
        "prompt_format": Value("string"),
    }
)

_DIFFICULTY = re.compile(r"^([1-9])x([1-9])$")
MAX_PROBLEMS = 1_000_000  # per call: a bound for library users, as the CLI's parameters have
_ENUMERATE_LIMIT = 200_000  # cells up to this size (2x3 has 162,000 pairs) are enumerated
_DRAW_CHUNK = 4096


def parse_difficulty(difficulty: str) -> tuple[int, int]:
    """``"1x2"`` -> ``(1, 2)``; anything else raises a ValueError naming the value."""
    m = _DIFFICULTY.match(str(difficulty))
    if not m:
        raise ValueError(
            f"difficulty {difficulty!r} is not of the form 'AxB' with A, B digits per operand "
            f"in 1..{MAX_DIGITS} (for example '1x1', '1x2', '2x2', '3x3')"
        )
    return int(m.group(1)), int(m.group(2))


def difficulty_label(digits_a: int, digits_b: int) -> str:
    """Order-insensitive tag: (2, 1) and (1, 2) are both ``"1x2"``."""
    lo, hi = sorted((digits_a, digits_b))
    return f"{lo}x{hi}"


def n_digits(x: int) -> int:
    return len(str(abs(int(x))))


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"operator {op!r} is not one of {list(OPERATORS)}")


def count_cascades(a: int, b: int) -> int:
    """Columns of a + b that carry *only because* a carry came in: their digits sum to 9 and
    the column before carried (99+1 has one: the tens carry exists only because the units
    carried). Two carries are not a cascade when each column carries on its own (55+55)."""
    da, db = [int(c) for c in str(abs(int(a)))[::-1]], [int(c) for c in str(abs(int(b)))[::-1]]
    width = max(len(da), len(db))
    da += [0] * (width - len(da))
    db += [0] * (width - len(db))
    carry, count = 0, 0
    for x, y in zip(da, db):
        if x + y == 9 and carry:
            count += 1
        carry = 1 if x + y + carry >= 10 else 0
    return count


def count_carries(a: int, op: str, b: int) -> int:
    """Column carries for +, borrows for - (larger minus smaller), and for * the number of
    single-digit partial products that reach 10 (each one forces a carry)."""
    a, b = abs(int(a)), abs(int(b))
    if op == "-":
        a, b = max(a, b), min(a, b)
    da, db = [int(c) for c in str(a)[::-1]], [int(c) for c in str(b)[::-1]]
    if op == "*":
        return sum(1 for x in da for y in db if x * y >= 10)
    width = max(len(da), len(db))
    da += [0] * (width - len(da))
    db += [0] * (width - len(db))
    carry, count = 0, 0
    for x, y in zip(da, db):
        if op == "+":
            carry = 1 if x + y + carry >= 10 else 0
        else:
            carry = 1 if x - y - carry < 0 else 0
        count += carry
    return count


def format_prompt(a: int, op: str, b: int, prompt_format: str) -> tuple[str, str]:
    """(prompt, target) for one problem. The target includes the separator the model
    is expected to emit first (a space after ``A:``), so prompt + target reads naturally."""
    answer = apply_op(a, op, b)
    if prompt_format == "bare":
        return f"{a}{op}{b}=", f"{answer}"
    if prompt_format == "qa":
        return f"Q: What is {a} {OP_WORDS[op]} {b}? A:", f" {answer}"
    raise ValueError(f"prompt_format {prompt_format!r} is not one of {list(PROMPT_FORMATS)}")


def _operand_range(digits: int) -> tuple[int, int]:
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


def _cell_pairs(op: str, da: int, db: int, n: int, rng: np.random.Generator, allow_negative: bool):
    """Up to n distinct (a, b) pairs for one cell; all of them if the cell holds fewer.
    A cell with unequal digit counts holds both operand orders (``7+45`` and ``45+7``)."""
    orientations = [(da, db)] if da == db else [(da, db), (db, da)]
    ranges = [(_operand_range(x), _operand_range(y)) for x, y in orientations]
    size = sum((ha - la + 1) * (hb - lb + 1) for (la, ha), (lb, hb) in ranges)

    def normalise(a, b):
        if op == "-" and not allow_negative:
            return np.maximum(a, b), np.minimum(a, b)
        return a, b

    if size <= _ENUMERATE_LIMIT:  # a small cell: enumerate it, shuffle, keep the first n
        grids = [np.meshgrid(np.arange(la, ha + 1), np.arange(lb, hb + 1), indexing="ij") for (la, ha), (lb, hb) in ranges]
        a = np.concatenate([g[0].ravel() for g in grids])
        b = np.concatenate([g[1].ravel() for g in grids])
        a, b = normalise(a, b)
        pairs = np.unique(np.stack([a, b], axis=1), axis=0)
        rng.shuffle(pairs)
        return [tuple(map(int, p)) for p in pairs[:n]]
    # a large cell: draw candidates in fixed-size vectorised rounds and keep the first n
    # distinct ones, so the work is proportional to n, not to the cell's size. In both branches
    # the order does not depend on n: asking for more problems gives a superset.
    lows_a = np.array([r[0][0] for r in ranges])
    highs_a = np.array([r[0][1] for r in ranges])
    lows_b = np.array([r[1][0] for r in ranges])
    highs_b = np.array([r[1][1] for r in ranges])
    seen: dict[tuple[int, int], None] = {}
    while len(seen) < n:
        which = rng.integers(0, len(ranges), size=_DRAW_CHUNK)
        a = rng.integers(lows_a[which], highs_a[which] + 1)
        b = rng.integers(lows_b[which], highs_b[which] + 1)
        a, b = normalise(a, b)
        for pair in zip(a.tolist(), b.tolist()):
            seen.setdefault(pair)
            if len(seen) == n:
                break
    return list(seen)


def make_problems(
    operators: Sequence[str] = ("+",),
    difficulties: Sequence[str] = ("1x1", "1x2", "2x2"),
    n_per_cell: int = 100,
    prompt_format: str = "bare",
    seed: int = 0,
    allow_negative: bool = False,
) -> Dataset:
    """A Dataset of n_per_cell distinct problems per (operator, difficulty) cell.

    With ``allow_negative=False`` subtraction puts the larger operand first. A cell with
    fewer distinct problems than n_per_cell (1x1 has 100) contributes all of them.
    """
    validate_problem_args(operators, difficulties, n_per_cell, prompt_format)
    rows: list[dict] = []
    for op in operators:
        for difficulty in difficulties:
            da, db = parse_difficulty(difficulty)
            rng = np.random.default_rng([int(seed), OPERATORS.index(op), da, db])
            for a, b in _cell_pairs(op, da, db, n_per_cell, rng, allow_negative):
                rows.append(problem_row(a, op, b, prompt_format))
    return Dataset.from_list(rows, features=FEATURES)


def problem_row(a: int, op: str, b: int, prompt_format: str) -> dict:
    prompt, target = format_prompt(a, op, b, prompt_format)
    return {
        "a": a,
        "b": b,
        "op": op,
        "answer": apply_op(a, op, b),
        "digits_a": n_digits(a),
        "digits_b": n_digits(b),
        "difficulty": difficulty_label(n_digits(a), n_digits(b)),
        "carries": count_carries(a, op, b),
        "prompt": prompt,
        "target": target,
        "prompt_format": prompt_format,
    }


def validate_problem_args(operators, difficulties, n_per_cell, prompt_format) -> None:
    if isinstance(operators, str) or not operators:
        raise ValueError(f"operators must be a non-empty list drawn from {list(OPERATORS)}, got {operators!r}")
    bad = [op for op in operators if op not in OPERATORS]
    if bad:
        raise ValueError(f"operators: {bad} not allowed; choose from {list(OPERATORS)}")
    if isinstance(difficulties, str) or not difficulties:
        raise ValueError(f"difficulties must be a non-empty list such as ['1x1', '2x2'], got {difficulties!r}")
    for d in difficulties:
        parse_difficulty(d)
    if not isinstance(n_per_cell, int) or isinstance(n_per_cell, bool) or n_per_cell < 1:
        raise ValueError(f"n_per_cell must be a positive integer, got {n_per_cell!r}")
    if n_per_cell * len(operators) * len(difficulties) > MAX_PROBLEMS:
        raise ValueError(f"n_per_cell = {n_per_cell} over {len(operators)} operator(s) x {len(difficulties)} difficulties asks for "
                         f"more than {MAX_PROBLEMS:,} problems; ask for fewer per cell")
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format {prompt_format!r} is not one of {list(PROMPT_FORMATS)}")


def pair_key(a: int, op: str, b: int) -> tuple:
    """Identity of a problem up to operand order, for held-out splits."""
    return (op, min(a, b), max(a, b))


def exclude_pairs(ds: Dataset, other: Dataset | Iterable[tuple]) -> Dataset:
    """Rows of ds whose problem (in either operand order) does not occur in other."""
    keys = other if not isinstance(other, Dataset) else {pair_key(r["a"], r["op"], r["b"]) for r in other}
    keys = set(keys)
    return ds.filter(lambda r: pair_key(r["a"], r["op"], r["b"]) not in keys)


def save_problems(ds: Dataset, path: str | Path) -> Path:
    """Parquet for a ``.parquet`` path, else ``save_to_disk``."""
    path = Path(path)
    if path.suffix == ".parquet":
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    return path


_HUB_QUESTION = re.compile(r"What is (-?\d+) (plus|minus|times) (-?\d+)\?")
_WORD_OPS = {w: op for op, w in OP_WORDS.items()}


def from_context_completion(ds: Dataset) -> Dataset:
    """Convert rows of ``context``/``completion`` (EleutherAI/arithmetic style) to FEATURES.

    The original prompt and completion are kept; rows that are not a two-operand
    question (the composite ``1dc`` task, say) are dropped."""
    rows = []
    for r in ds:
        m = _HUB_QUESTION.search(r["context"])
        if not m:
            continue
        a, op, b = int(m.group(1)), _WORD_OPS[m.group(2)], int(m.group(3))
        row = problem_row(a, op, b, "qa")
        row.update(prompt=r["context"], target=r["completion"], prompt_format="hub")
        rows.append(row)
    return Dataset.from_list(rows, features=FEATURES)


_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _pick_split(ds, source, split: str | None):
    """One split of a DatasetDict: the one asked for, else the only one; else list them."""
    from datasets import DatasetDict

    if not isinstance(ds, DatasetDict):
        return ds
    if split in ds:
        return ds[split]
    if len(ds) == 1:
        return next(iter(ds.values()))
    raise ValueError(f"dataset {str(source)!r} has the splits {sorted(ds)}; pass split= one of them"
                     + (f" (there is no {split!r})" if split else ""))


def load_problems(source: str | Path, config: str | None = None, split: str | None = "validation") -> Dataset:
    """Problems from a ``save_to_disk`` folder, a single parquet / JSONL / CSV file, a local
    copy of a Hub dataset, or (online) a Hub name such as ``EleutherAI/arithmetic`` with a
    config. A folder or Hub dataset with one split gives that split whatever its name."""
    path = Path(source)
    if path.is_file() and path.suffix in _FILE_BUILDERS:
        ds = load_dataset(_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
    elif path.is_file():
        raise ValueError(f"dataset {str(source)!r}: a single file must end in one of {sorted(_FILE_BUILDERS)}")
    elif (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        ds = _pick_split(load_from_disk(str(path)), source, split)
    elif path.exists():
        ds = _pick_split(load_dataset(str(path), config), source, split)
    else:
        require_hub(
            "dataset",
            str(source),
            "Download it where you have internet, e.g. "
            f"`datasets.load_dataset({str(source)!r}, {config!r}, split={split!r}).save_to_disk('DIR')`, "
            "copy DIR here and pass dataset='DIR'; or generate problems with mechlib.core.data.make_problems.",
        )
        ds = _pick_split(load_dataset(str(source), config), source, split)
    if "context" in ds.column_names and "completion" in ds.column_names:
        ds = from_context_completion(ds)
    missing = set(FEATURES) - set(ds.column_names)
    if missing:
        raise ValueError(f"dataset {str(source)!r} lacks the columns {sorted(missing)}")
    return ds.cast(FEATURES) if ds.features != FEATURES else ds


__all__ = [
    "FEATURES",
    "OPERATORS",
    "PROMPT_FORMATS",
    "apply_op",
    "count_carries",
    "count_cascades",
    "exclude_pairs",
    "format_prompt",
    "from_context_completion",
    "load_problems",
    "make_problems",
    "pair_key",
    "parse_difficulty",
    "problem_row",
    "save_problems",
]
