import pandas as pd
import pytest
import torch

from mechlib.core import data, sae


def exact_dictionary(d: int) -> sae.Dictionary:
    """relu(x) - relu(-x) = x: reconstructs any input exactly."""
    dic = sae.Dictionary(d, d, 2 * d, activation="relu")
    eye = torch.eye(d)
    with torch.no_grad():
        dic.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        dic.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        dic.b_enc.zero_()
        dic.b_dec.zero_()
    return dic


def test_exact_dictionary_leaves_logits_unchanged(tiny_model):
    tokens = tiny_model.to_tokens(["12+34=46"])
    dic = exact_dictionary(tiny_model.cfg.d_model)
    with torch.no_grad():
        clean = tiny_model(tokens)
        with tiny_model.hooks(fwd_hooks=sae.splice_hooks(dic, "sae", 1)):
            spliced = tiny_model(tokens)
    assert torch.allclose(clean, spliced, atol=1e-5)
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=sae.zero_hooks("sae", 1)):
        assert not torch.allclose(clean, tiny_model(tokens), atol=1e-3)


def test_transcoder_splice_reads_the_mlp_input(tiny_model):
    tokens = tiny_model.to_tokens(["12+34=46"])
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return torch.zeros_like(x), x

    with torch.no_grad(), tiny_model.hooks(fwd_hooks=sae.splice_hooks(Probe(), "transcoder", 0)):
        _, cache = tiny_model.run_with_cache(tokens, names_filter="blocks.0.ln2.hook_normalized")
    assert torch.equal(seen["x"], cache["blocks.0.ln2.hook_normalized"])


def test_frozen_base_stays_frozen_and_alpha_endpoints():
    torch.manual_seed(0)
    base = sae.Dictionary(8, 8, 16, "topk", 4, seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    delta = sae.DeltaDictionary(base, sae.Dictionary(8, 8, 4, "topk", 2, seed=1))
    x = torch.randn(64, 8)
    sae.train_dictionaries([delta], [(x, x * 2)] * 20)
    assert all(not p.requires_grad and p.grad is None for p in base.parameters())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert any(p.grad is not None for p in delta.delta.parameters())
    with torch.no_grad():
        delta.alpha = 0.0
        assert torch.equal(delta(x)[0], base(x)[0])  # alpha = 0 is no_delta
        delta.alpha = 1.0
        assert torch.allclose(delta(x)[0], base(x)[0] + delta.delta(x)[0])  # alpha = 1 is full


def test_metrics_on_a_hand_made_case():
    dic = sae.Dictionary(2, 2, 3, activation="relu")
    with torch.no_grad():
        dic.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        dic.b_enc.copy_(torch.tensor([0.0, 0.0, -1.0]))  # latent 2 never fires
        dic.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
        dic.b_dec.zero_()
    y = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    m = sae.reconstruction_metrics(dic, y, y)
    assert m == {"l0": 1.0, "explained_variance": 1.0, "nmse": 0.0, "dead_fraction": pytest.approx(1 / 3)}
    with torch.no_grad():
        dic.W_dec.zero_()  # reconstructs 0: EV = 1 - 5 / 2.5, NMSE = 5 / 5
    m = sae.reconstruction_metrics(dic, y, y)
    assert m["explained_variance"] == pytest.approx(-1.0) and m["nmse"] == pytest.approx(1.0)


def test_topk_keeps_k_and_bad_configs_fail():
    dic = sae.Dictionary(8, 8, 32, "topk", 3)
    assert int((dic.encode(torch.randn(10, 8)) > 0).sum(-1).max()) <= 3
    with pytest.raises(ValueError, match="k=40"):
        sae.Dictionary(8, 8, 32, "topk", 40)
    with pytest.raises(ValueError, match="activation"):
        sae.Dictionary(8, 8, 32, "gelu")
    with pytest.raises(ValueError, match="kind"):
        sae.sites("resid", 0)


def test_activation_buffer_is_bounded_and_serves_exactly(tiny_model):
    problems = data.make_problems(["+", "-"], ["1x1", "2x2"], 60, seed=0).to_pandas()
    buf = sae.ActivationBuffer(tiny_model, problems, "blocks.0.hook_mlp_out", "blocks.0.hook_mlp_out",
                               n_tokens=1000, batch_tokens=64, buffer_tokens=128, seed=0, problem_batch=16)
    rows = sum(len(x) for x, _ in buf)
    assert rows == 1000
    assert buf.peak_rows <= 128 + 16 * 4  # the buffer plus at most one problem batch of answer tokens
    first = [x.sum().item() for x, _ in sae.ActivationBuffer(tiny_model, problems, "blocks.0.hook_mlp_out", "blocks.0.hook_mlp_out", 300, 64, 128, 0, 16)]
    again = [x.sum().item() for x, _ in sae.ActivationBuffer(tiny_model, problems, "blocks.0.hook_mlp_out", "blocks.0.hook_mlp_out", 300, 64, 128, 0, 16)]
    assert first == again


def test_answer_activations_are_the_answer_positions(tiny_model):
    problems = pd.DataFrame([data.problem_row(12, "+", 34, "bare")])
    chunk = next(sae.answer_activations(tiny_model, problems, ["blocks.1.hook_resid_post"]))
    tokens = tiny_model.to_tokens("12+34=46")
    _, cache = tiny_model.run_with_cache(tokens)
    plen = len(tiny_model.to_tokens("12+34=")[0])
    assert torch.allclose(chunk["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"][0, plen - 1 : plen + 1])


def test_ce_recovered():
    assert sae.ce_recovered(1.0, 1.0, 3.0) == 1.0
    assert sae.ce_recovered(1.0, 3.0, 3.0) == 0.0
    assert sae.ce_recovered(1.0, 2.0, 3.0) == 0.5


def test_saelens_round_trip(tmp_path):
    from sae_lens import SAE

    for activation in ("topk", "relu"):
        dic = sae.Dictionary(8, 8, 16, activation, 4, seed=3)
        path = sae.save_saelens(dic, tmp_path / activation, "blocks.0.hook_mlp_out", "arith-organism")
        loaded = SAE.load_from_disk(path)
        x = torch.randn(5, 8)
        with torch.no_grad():
            assert torch.allclose(loaded.decode(loaded.encode(x)), dic(x)[0], atol=1e-5)
        assert loaded.cfg.metadata.hook_name == "blocks.0.hook_mlp_out"


@pytest.mark.parametrize("buffer_tokens", [2, 3])
def test_smallest_allowed_buffers_serve_and_stop(tiny_model, buffer_tokens):
    """buffer_tokens 2 or 3 used to loop forever: half of one row is zero rows."""
    import signal

    problems = data.make_problems(["+"], ["1x1"], 10, seed=0).to_pandas()
    buf = sae.ActivationBuffer(tiny_model, problems, "blocks.0.hook_mlp_out", "blocks.0.hook_mlp_out",
                               n_tokens=50, batch_tokens=8, buffer_tokens=buffer_tokens, seed=0, problem_batch=4)
    signal.alarm(60)  # a regression hangs; fail instead
    try:
        assert sum(len(x) for x, _ in buf) == 50
    finally:
        signal.alarm(0)
