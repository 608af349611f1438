"""Resuming teacher-forced scoring at a block gives what a whole forward gives, on the
organism and on small random Llama- and Gemma-shaped models (rotary positions, sliding
windows, grouped keys and values)."""
import numpy as np
import pytest

from mechlib.core import data, sae, tool_requests
from mechlib.core.evaluate import answer_scores
from mechlib.core.resume import Resumed


def _problems(model_name: str):
    if model_name == "organism":
        return data.make_problems(["+", "-"], ["1x1", "2x2"], 8, "bare", seed=0).to_pandas()
    return tool_requests.ood_requests(("*", "/"), 4, seed=0)


@pytest.fixture(params=["organism", "llama", "gemma"])
def model_and_problems(request, organism, llama_shaped_dir, gemma_shaped_dir):
    from mechlib.core.models import load_model

    model = organism if request.param == "organism" else load_model(str({"llama": llama_shaped_dir, "gemma": gemma_shaped_dir}[request.param]))[0]
    return model, _problems(request.param)


def test_resumed_scores_equal_a_whole_forward_at_every_start(model_and_problems):
    model, problems = model_and_problems
    whole = answer_scores(model, problems.prompt.tolist(), problems.target.tolist(), batch_size=8)
    resumed = Resumed(model, problems, range(model.cfg.n_layers), batch_size=8)
    for start in range(model.cfg.n_layers):
        got = resumed.scores(start)
        np.testing.assert_allclose(got.answer_loss, whole.answer_loss, atol=1e-4)
        assert (got.tf_correct == whole.tf_correct).all()


def test_resumed_splices_equal_splice_scores_and_refuse_earlier_hooks(model_and_problems):
    model, problems = model_and_problems
    last = model.cfg.n_layers - 1
    d = model.cfg.d_model
    lossy = sae.DeltaDictionary(sae.Dictionary(d, d, 8, "topk", 2, seed=0), sae.Dictionary(d, d, 4, "topk", 1, seed=1))
    hooks = sae.splice_hooks(lossy, "sae", last)
    resumed = Resumed(model, problems, [last], batch_size=8)
    got, want = resumed.splice(model, problems, hooks), sae.splice_scores(model, problems, hooks, batch_size=8)
    np.testing.assert_allclose(got.answer_loss, want.answer_loss, atol=1e-4)
    assert (got.correct == want.correct).all() and (got.output == "").all()
    assert not np.allclose(got.answer_loss, resumed.splice(model, problems, []).answer_loss, atol=1e-3)  # the hooks fired
    if last > 0:
        with pytest.raises(ValueError, match="before block"):
            resumed.splice(model, problems, sae.splice_hooks(lossy, "sae", last - 1))
    with pytest.raises(ValueError, match="was not stored"):
        resumed.scores(last - 1 if last else 1)
