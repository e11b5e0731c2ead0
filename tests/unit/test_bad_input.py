"""Bad input, fuzzed and hand-made: a clear error naming the key, file or layer, or a valid
plan; never a traceback from deep inside a library."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from actsparse.config import ConfigError, compose_study
from actsparse.io import load_tensors, save_tensors
from actsparse.models import load_model
from actsparse.plan import StudyPlan, config_hash
from actsparse.schema.study import to_dict


def _leaf_keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


KNOWN = sorted(_leaf_keys(to_dict(compose_study(["experiment=smoke"]))))
VALUES = st.one_of(
    st.integers(-(10**9), 10**9).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(lambda b: str(b).lower()),
    st.sampled_from(["null", "[]", "{}", "''", "abc", "1e-3", "-0", "[1,2]", "{a: 1}", "'a b'"]),
    st.text("abcxyz019_-./", min_size=0, max_size=8),
)
KEYS = st.one_of(
    st.sampled_from(KNOWN), st.from_regex(r"[a-z]{1,6}(\.[a-z_]{1,8}){0,2}", fullmatch=True)
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(["", "+", "++"]), KEYS, VALUES).map(lambda t: f"{t[0]}{t[1]}={t[2]}"),
    KEYS.map(lambda k: f"~{k}"),  # deletions, e.g. every model: an empty sweep
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OVERRIDE, min_size=1, max_size=4))
def test_any_overrides_end_in_a_clear_error_or_a_valid_plan(overrides):
    try:
        cfg = compose_study(["experiment=smoke", *overrides])
    except ConfigError as e:
        assert str(e).strip()
        return
    plan = StudyPlan(cfg)
    jobs = plan.jobs()
    assert jobs and all(
        j.hash == config_hash({"stage": j.stage, "config": j.config, "inputs": _ids(j, plan.root)})
        for j in jobs
    )


def _ids(job, root: str):
    return {k: v[len(root) + 1 :] if v.startswith(root + "/") else v for k, v in job.inputs.items()}


@pytest.mark.parametrize("value", ["[]", "[1,2]", "{a: 1}", "3", "null"])
@pytest.mark.parametrize(
    "entry",
    ["sparsify.methods.teal_greedy", "predictors.methods.dejavu_mlp", "decompose.methods.svd"],
)
def test_a_method_name_that_is_not_a_string_is_refused_by_key(entry, value):
    # found by the fuzz test above: `method=[]` reached the registry's dict lookup
    with pytest.raises(ConfigError, match=rf"{entry}\.method"):
        compose_study(["experiment=smoke", f"{entry}.method={value}"])


@pytest.mark.parametrize(
    ("overrides", "known"),
    [
        (["experiment=smoke", "calibrate.corpus=c4"], "pydoc"),
        (["experiment=llama2_7b", "calibrate.corpus=pydoc"], "c4"),
        (["experiment=scaling", "+models.x.source=pretrained", "+models.x.path=gpt2",
          "calibrate.corpus=c4"], "none"),
    ],
)  # fmt: skip
def test_a_calibration_corpus_must_be_an_eval_data_corpus(overrides, known, hub_on_but_unreachable):
    with pytest.raises(ConfigError) as err:
        compose_study(overrides)
    corpus = overrides[-1].split("=")[1]
    assert f"calibrate.corpus: unknown corpus {corpus!r}" in str(err.value)
    assert f"eval_data corpora: {known};" in str(err.value)
    assert f"command-line override '{overrides[-1]}'" in str(err.value)


def test_the_study_corpus_by_name_is_refused_as_a_calibration_corpus(hub_on_but_unreachable):
    # the study's own corpus is `null`, not its name (one spelling, one hash)
    with pytest.raises(ConfigError, match=r"calibrate\.corpus: unknown corpus 'wikitext2': must "
                       r"be null \(the study's corpus, 'wikitext2'\)"):  # fmt: skip
        compose_study(["experiment=opt_6_7b", "calibrate.corpus=wikitext2"])
    # an eval_data corpus is accepted, and null is the study's
    assert compose_study(["experiment=smoke", "calibrate.corpus=pydoc"]).calibrate.corpus == "pydoc"
    assert compose_study(["experiment=opt_6_7b", "calibrate.corpus=null"]).calibrate.corpus is None


def test_removing_every_model_is_refused():
    with pytest.raises(ConfigError, match="models: the study needs at least one model"):
        compose_study(
            ["experiment=smoke", "~models.llama_micro", "~models.opt_micro", "~scaling.sizes"]
        )
    # a study of the scaling grid alone is valid: data, the grid's train jobs and the fit
    grid_only = StudyPlan(compose_study(["experiment=scaling"]))
    assert not grid_only.cfg.models
    assert {j.stage for j in grid_only.jobs()} == {"data", "train", "scaling"}


def _tiny_llama(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
        )
    )
    return model


def test_non_finite_weights_fail_naming_the_layer(tmp_path):
    model = _tiny_llama(tmp_path)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path)
    with pytest.raises(FloatingPointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(tmp_path)


def test_truncated_model_weights_name_the_checkpoint(tmp_path):
    _tiny_llama(tmp_path).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"could not load the model weights in {tmp_path}"):
        load_model(tmp_path)


def test_tensor_files_name_the_file_and_tensor(tmp_path):
    path = tmp_path / "layer_003.safetensors"
    save_tensors(path, {"ffn_in": torch.tensor([[1.0, float("nan")]], dtype=torch.float64)})
    with pytest.raises(FloatingPointError, match=r"'ffn_in' of .*layer_003\.safetensors"):
        load_tensors(path)
    assert load_tensors(path, check_finite=False)["ffn_in"].shape == (1, 2)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(
        ValueError, match=r"corrupted or truncated safetensors file .*layer_003\.safetensors"
    ):
        load_tensors(path)
