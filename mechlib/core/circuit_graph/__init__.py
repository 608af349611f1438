"""The computational graph of a HookedTransformer, and circuit-discovery scores on it.

Modules: :mod:`.graph` (nodes, edges, the hooks it needs), :mod:`.ablation` (a forward pass
with edges ablated), :mod:`.scores` (exact patching, EAP, EAP-IG), :mod:`.analysis` (residual
patching, attention, direct logit attribution). Everything is importable from here.

Nodes that write to the residual stream (*sources*): the embeddings (token plus position),
every attention head, every MLP. Nodes that read it (*destinations*): each head's query, key
and value inputs separately, every MLP, and the residual end (what the unembedding reads). An
edge s -> d exists when s sits before d. Every destination's input is the sum of its upstream
sources' outputs (plus constant biases), so an edge is ablated by replacing s's term in d's
input with an ablated value: zero, the dataset mean, or s's output on a corrupted input
(resample). The rest of the forward pass runs as usual.

Scores for every edge: exact patching (one forward per edge, batched), edge attribution
patching (EAP: the first-order term, one forward and one backward; Syed et al. 2023) and EAP
with integrated gradients (EAP-IG: the gradient averaged over inputs interpolated from the
ablated to the clean embeddings; Hanna et al. 2024). Padded inputs are supported: padded keys
are masked in every attention layer, bidirectional ones included.
"""
from __future__ import annotations

from .ablation import (  # noqa: F401
    Task,
    ablated_outputs,
    head_results,
    run_ablated,
    source_outputs,
)
from .analysis import (  # noqa: F401
    attention_to,
    direct_effects,
    residual_patching,
)
from .graph import (  # noqa: F401
    ABLATIONS,
    Graph,
    Metric,
    graph_of,
    numpy,
    prepare,
)
from .scores import (  # noqa: F401
    circuit_metric,
    eap_scores,
    exact_edge_scores,
    exact_node_scores,
    node_ablation_matrix,
    single_edges,
    top_k_masks,
)
