"""The neuron profile names the property a hand-made neuron was built from."""
import numpy as np
import pandas as pd
import pytest

from mechlib.core.neuron_profile import adjusted_eta_squared, profile


def table():
    a, b = np.divmod(np.arange(100), 10)  # every pair of one-digit operands
    rng = np.random.default_rng(0)
    neurons = np.stack([
        ((a + b) >= 10).astype(float) + 0.05 * rng.standard_normal(100),  # fires on a carry
        ((a + b) % 10 == 3).astype(float),  # results ending in 3
        a / 9.0,  # the first operand's size
        np.clip(a + b - 12, 0, None),  # large results only
        rng.standard_normal(100),  # nothing
        np.zeros(100),  # dead
    ], axis=1)
    return neurons, a, b


def test_each_hand_made_neuron_gets_the_property_it_was_built_from():
    neurons, a, b = table()
    out = profile(neurons, a, b, names=["carry", "mod", "operand", "range", "noise", "dead"])
    labels = dict(zip(out.neuron, out.label))
    assert labels["carry"] == "carry"
    assert labels["mod"] == "result mod 10"
    assert labels["operand"] == "first operand"
    assert labels["range"] == "result"
    assert labels["noise"] == "mixed" and labels["dead"] == "mixed"
    row = out.set_index("neuron").loc["operand"]
    assert row["first operand"] == pytest.approx(1.0) and row["second operand"] <= 0  # adjusted: below 0 by chance


def test_the_adjustment_removes_what_many_groups_explain_by_chance():
    rng = np.random.default_rng(1)
    values, groups = rng.standard_normal(100), np.arange(100) % 19
    means = pd.Series(values).groupby(groups).transform("mean").to_numpy()
    raw = 1 - ((values - means) ** 2).sum() / ((values - values.mean()) ** 2).sum()
    assert raw > 0.1 and abs(adjusted_eta_squared(values, groups)) < 0.1


def test_bad_shapes_and_thresholds_fail_clearly():
    neurons, a, b = table()
    with pytest.raises(ValueError, match="one row per"):
        profile(neurons[:50], a, b)
    with pytest.raises(ValueError, match="min_share"):
        profile(neurons, a, b, min_share=0)
