"""The closed-form tuned lens on small random Llama- and Gemma-shaped models: its text never
holds a test problem, the ridge solve recovers a known affine map, an identity translator
reads what the logit lens reads, and scoring only the first digit's position changes nothing."""
import pandas as pd
import pytest
import torch

from mechlib.core import tuned_lens
from mechlib.core.interventions import logit_lens
from mechlib.core.models import load_model

PROMPTS = ["1+2=3\n4+4=8\n2+5=", "3+3=6\n1+1=2\n7+8=", "2+2=4\n5+1=6\n9+9="]
TARGETS = ["7", "15", "18"]


def test_the_fitting_text_never_holds_a_test_problem_in_either_order():
    test = pd.DataFrame({"a": [3, 12], "op": ["+", "+"], "b": [4, 34]})
    lines = tuned_lens.arithmetic_lines(["+"], ["1x1", "2x2"], test, 100, 0)
    assert lines and all("=" in x for x in lines)
    assert not {"3+4=7", "4+3=7", "12+34=46", "34+12=46"} & set(lines)
    prose = tuned_lens.prose_paragraphs(0)
    assert len(prose) > 100 and all(p.endswith(".") and "\n" not in p for p in prose)
    assert prose == tuned_lens.prose_paragraphs(0) and prose != tuned_lens.prose_paragraphs(1)


def test_the_ridge_solve_recovers_a_known_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    a, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    y = x @ a + b
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = tuned_lens._solve(x1.T @ x1, x1.T @ y, 1e-9)
    assert torch.allclose(w[:6], a, atol=1e-6) and torch.allclose(w[6], b, atol=1e-6)
    stats = [x1.T @ x1, x1.T @ y, y.pow(2).sum(0)]
    assert tuned_lens._sse(stats, w) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shape", ["llama_shaped_dir", "gemma_shaped_dir"])
def test_an_identity_translator_reads_what_the_logit_lens_reads(shape, request):
    model, _ = load_model(str(request.getfixturevalue(shape)), device="cpu")
    d = model.cfg.d_model
    identity = {l: (torch.eye(d), torch.zeros(d)) for l in range(-1, model.cfg.n_layers - 1)}
    plain = logit_lens(model, PROMPTS, TARGETS, 2)
    tuned = logit_lens(model, PROMPTS, TARGETS, 2, identity, all_positions=False)
    for col in ("top1_first", "rank_first"):
        assert (plain[col].values == tuned[col].values).all()
    assert tuned.kl_final.values == pytest.approx(plain.kl_final.values, abs=1e-3)
    assert tuned.p_first.values == pytest.approx(plain.p_first.values, abs=1e-4)
    last = plain[plain.layer == model.cfg.n_layers - 1]
    assert (last.kl_final.abs() < 1e-5).all() and ((last.rank_first == 1) == last.top1_first).all()
    assert "tf_correct" in plain and "tf_correct" not in tuned


def test_the_fit_covers_every_layer_but_the_last_and_repeats(llama_shaped_dir):
    model, _ = load_model(str(llama_shaped_dir), device="cpu")
    text = tuned_lens.train_text(model, ["+"], ["1x1", "1x2"], pd.DataFrame({"a": [1], "op": ["+"], "b": [2]}), 640, 0)
    assert text.shape == (10, tuned_lens.WINDOW)
    translators, fit = tuned_lens.fit(model, text, 4)
    again, _ = tuned_lens.fit(model, text, 4)
    assert sorted(translators) == list(range(-1, model.cfg.n_layers - 1)) == list(fit.layer)
    assert all(torch.equal(translators[k][0], again[k][0]) for k in translators)
    assert fit.ridge.isin(tuned_lens.RIDGE_GRID).all() and (fit.held_out_r2 <= 1).all()
    assert (fit.positions == 10 * (tuned_lens.WINDOW - int(model.cfg.default_prepend_bos))).all()
    assert (fit.parameters == model.cfg.d_model ** 2 + model.cfg.d_model).all()
