"""The faithfulness study's pieces: the bisection that names the circuit, and the layer-matched
random control."""
import numpy as np

from mechlib.core import circuit_graph as cg
from mechlib.core.faithfulness import _layer_strata, matched_random, smallest_k


def test_bisection_finds_the_smallest_k_that_reaches_the_share():
    calls = []

    def recovered(k):
        calls.append(k)
        return k / 100

    assert smallest_k(recovered, 100, 0.37) == 37
    assert len(calls) <= 9  # log2(100) + the check of the largest size
    assert smallest_k(lambda k: 0.1, 50, 0.8) == 50  # never reached: the largest size asked


def test_random_edges_match_the_circuit_layer_by_layer():
    g = cg.Graph(3, 2)
    strata = _layer_strata(g, 3)
    rng = np.random.default_rng(0)
    top = np.zeros(len(g.edges))
    top[rng.choice(len(g.edges), 12, replace=False)] = 1
    like = g.edge_matrix(top) > 0
    drawn = matched_random(g, strata, like, rng)
    a, b = g.edge_values(like).astype(bool), g.edge_values(drawn).astype(bool)
    assert a.sum() == b.sum() == 12
    for stratum in np.unique(strata):
        assert a[strata == stratum].sum() == b[strata == stratum].sum()
    assert (a & b).sum() < 12  # other edges of the same layers, not the circuit itself
