"""The evaluation harness against direct computations with the model."""

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from actsparse.data import TokenData
from actsparse.models import load_model
from actsparse.perplexity import evaluate_lm, unigram_logprobs, windows


@pytest.fixture(scope="module")
def setup(smoke_outputs):
    plan = smoke_outputs
    job = plan.evaluate("llama_micro")
    model, _ = load_model(job.inputs["model"])
    data = TokenData(job.inputs["data"])
    wins = windows(data.tokens("test"), 64, 4096)
    uni = unigram_logprobs(data.tokens("train"), model.config.vocab_size)
    return model, data, wins, uni


def test_windows_are_non_overlapping_and_drop_the_tail():
    w = windows(np.arange(130), 32, None)
    assert w.shape == (4, 32) and w[1, 0] == 32 and w[-1, -1] == 127
    assert windows(np.arange(130), 32, 70).shape == (2, 32)
    with pytest.raises(ValueError, match="do not fill one window"):
        windows(np.arange(10), 32, None)


def test_perplexity_equals_the_models_own_loss(setup):
    model, _, wins, uni = setup
    r = evaluate_lm(model, wins, batch_size=3, unigram=uni)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.double().item() for w in wins]
    assert r.n_predicted == wins.shape[0] * (wins.shape[1] - 1)
    assert math.isclose(r.nll, float(np.mean(losses)), rel_tol=1e-6)
    assert math.isclose(r.perplexity, math.exp(np.mean(losses)), rel_tol=1e-6)


def test_unigram_baseline_equals_a_direct_count(setup):
    model, data, wins, uni = setup
    r = evaluate_lm(model, wins, batch_size=8, unigram=uni)
    counts = np.bincount(data.tokens("train"), minlength=model.config.vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    targets = wins[:, 1:].numpy().ravel()
    assert math.isclose(r.unigram_nll, -logp[targets].mean(), rel_tol=1e-12)


def test_fidelity_is_exact_against_itself_and_positive_against_a_perturbed_copy(setup):
    model, _, wins, uni = setup
    same = evaluate_lm(model, wins, 4, uni, reference=model, fidelity_tokens=500)
    assert (
        same.hidden_rel_err == 0.0
        and same.kl == 0.0
        and math.isclose(same.hidden_cosine, 1.0, rel_tol=1e-12)
    )
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    r = evaluate_lm(other, wins, 4, uni, reference=model, fidelity_tokens=500)
    assert 0 < r.hidden_rel_err < 1 and r.kl > 0 and 0.5 < r.hidden_cosine < 1


def test_non_finite_loss_fails_loudly_and_is_never_dropped(setup):
    model, _, wins, uni = setup
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.lm_head.weight[:, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss in window 0"):
        evaluate_lm(broken, wins, 4, uni)


def test_stage_loads_a_separate_reference_model(smoke_outputs):
    """The path methods will use: a variant evaluated against the dense model it came from."""
    from actsparse.stages import evaluate
    from actsparse.stages.job import run_job
    from actsparse.tables import METRICS, read_table

    plan = smoke_outputs
    job = plan.evaluate("opt_micro")
    spec = replace(
        job,
        inputs={**job.inputs, "reference": plan.model_path("llama_micro")},
        output=job.output + "-vs-llama",
    )
    out = run_job(spec, evaluate.EvaluateJob, evaluate.run)
    m = read_table(out / "metrics.parquet", METRICS)
    m = m[m.corpus.fillna("").isin(["stdlib", ""])].set_index("metric")[
        "value"
    ]  # the study's corpus
    assert m["hidden_rel_err"] > 0 and m["kl_div"] > 0 and m["hidden_cosine"] < 1
