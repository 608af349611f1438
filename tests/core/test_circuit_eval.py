"""InterpBench case folders load safely; edge scores are scored against the truth correctly."""
import pickle

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechlib.core import circuit_eval as circuits


def write_case(folder, payload=None):
    """A small InterpBench-style case: edges.pkl, ll_model_cfg.pkl (a dict with a torch dtype
    and a torch.device) and ll_model.pth; ``payload`` replaces the config pickle."""
    cfg = {"n_layers": 1, "d_model": 8, "n_ctx": 6, "d_head": 4, "n_heads": 2, "d_mlp": 16, "d_vocab": 5, "act_fn": "relu",
           "dtype": torch.float32, "device": torch.device("cpu"), "normalization_type": None}
    folder.mkdir(parents=True, exist_ok=True)
    edges = [("blocks.0.hook_mlp_out", "blocks.1.hook_v_input[1]"), ("hook_embed", "blocks.0.hook_q_input[0]")]
    (folder / "edges.pkl").write_bytes(pickle.dumps(edges))
    (folder / "ll_model_cfg_510.pkl").write_bytes(payload if payload is not None else pickle.dumps(cfg))
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**{k: v for k, v in cfg.items()}))
    torch.save(model.state_dict(), folder / "ll_model_510.pth")
    return model, edges


def test_a_case_round_trips(tmp_path):
    model, edges = write_case(tmp_path / "case")
    loaded, loaded_edges = circuits.load_interpbench(tmp_path / "case")
    assert loaded_edges == edges
    tokens = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


class Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_a_code_executing_pickle_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    write_case(tmp_path / "case", payload=pickle.dumps({"n_layers": Payload(sentinel)}))
    with pytest.raises(circuits.UnsafePickleError, match="system"):
        circuits.load_interpbench(tmp_path / "case")
    assert not sentinel.exists()
    (tmp_path / "case" / "edges.pkl").write_bytes(pickle.dumps([Payload(sentinel)]))
    with pytest.raises(circuits.UnsafePickleError):
        circuits.safe_load_pickle(tmp_path / "case" / "edges.pkl")
    assert not sentinel.exists()


def test_a_folder_without_the_files_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="edges.pkl"):
        circuits.load_interpbench(tmp_path)


def test_auroc_on_hand_made_cases():
    truth = [True, True, False, False]
    assert circuits.auroc([4, 3, 2, 1], truth) == 1.0
    assert circuits.auroc([1, 2, 3, 4], truth) == 0.0
    assert circuits.auroc([1, 1, 1, 1], truth) == 0.5  # all tied: chance
    assert circuits.auroc([4, 2, 3, 1], truth) == 0.75  # one swapped pair of four
    assert circuits.auroc([-4, 3, 2, 1], truth) == 1.0  # absolute values rank
    # a true edge with a negligible score: plain AUROC ranks it above zeros, the floored one does not
    scores, truth = [1.0, 1e-9, 0.0, 0.0], [True, True, False, False]
    assert circuits.auroc(scores, truth) == 1.0
    assert circuits.auroc(scores, truth, floor=1e-6) == 0.75
    rng = np.random.default_rng(0)
    random = [circuits.auroc(rng.random(200), rng.random(200) < 0.3) for _ in range(50)]
    assert abs(np.mean(random) - 0.5) < 0.03
    with pytest.raises(ValueError, match="both"):
        circuits.auroc([1, 2], [True, True])
