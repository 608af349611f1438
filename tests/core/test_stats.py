import pandas as pd
import pytest

from mechlib.core import stats


@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (81, 100, 0.7222, 0.8749)])
def test_wilson_matches_published_values(k, n, lo, hi):
    got = stats.wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_edge_cases():
    assert all(x != x for x in stats.wilson(0, 0))
    with pytest.raises(ValueError, match="k=3 must be in 0..n=2"):
        stats.wilson(3, 2)


def test_accuracy_by_counts_and_intervals():
    df = pd.DataFrame({"op": ["+"] * 10 + ["-"] * 4, "correct": [True] * 5 + [False] * 5 + [True] * 4})
    table = stats.accuracy_by(df, "op").set_index("op")
    assert table.loc["+", "n"] == 10 and table.loc["+", "k"] == 5 and table.loc["+", "accuracy"] == 0.5
    assert (table.loc["+", "lo"], table.loc["+", "hi"]) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert table.loc["-", "hi"] == 1.0


def test_bootstrap_and_seed_spread_are_deterministic():
    values = [0.1, 0.5, 0.9, 0.4]
    assert stats.bootstrap_mean(values, seed=1) == stats.bootstrap_mean(values, seed=1)
    mean, lo, hi = stats.bootstrap_mean(values)
    assert lo <= mean <= hi
    spread = stats.seed_spread([0.9, 1.0, 0.95])
    assert spread["n_seeds"] == 3 and spread["min"] == 0.9 and spread["sd"] == pytest.approx(0.05)
    assert stats.fmt_interval(0.5, 0.2366, 0.7634, 10) == "50.0% [23.7, 76.3], n = 10"


def test_mcnemar_counts_the_discordant_items_and_pairs_them():
    from mechlib.core.stats import mcnemar

    a = [True] * 10 + [False] * 10
    b = [True] * 4 + [False] * 16
    out = mcnemar(a, b)
    assert (out["a_only"], out["b_only"]) == (6, 0) and out["p"] == pytest.approx(2 * 0.5**6)
    assert mcnemar(a, a)["p"] == 1.0  # no discordant item: no evidence of a difference
    with pytest.raises(ValueError, match="same items"):
        mcnemar([True], [True, False])
