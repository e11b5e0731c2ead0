"""Family adapters on tiny random configs of each family, and the one loader."""

import pytest
import torch
from helpers import FAMILIES, TINY_D, TINY_F, TINY_V, tiny_model

from actsparse.models import adapter_for, load_model
from actsparse.models.adapters import LINEAR_SITES, linear_shape

D, F, V = TINY_D, TINY_F, TINY_V
_tiny = tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_sites_have_the_expected_widths(family):
    model = _tiny(family)
    adapter = adapter_for(model.config.model_type)
    assert len(adapter.layers(model)) == 2
    widths = {"attn_in": D, "o_proj_in": D, "ffn_in": D, "ffn_intermediate": F}
    for layer in range(2):
        sites = adapter.site_linears(model, layer)
        assert set(sites) == set(LINEAR_SITES)
        for site, linears in sites.items():
            for name, module in linears:
                assert name.startswith(adapter.block_path(model, layer))
                assert model.get_submodule(name) is module
                assert linear_shape(module)[0] == widths[site], (site, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_ffn_intermediate_site_is_the_activation_of_the_ffn_input(family):
    """Recompute the down projection's input from the ffn_in site: the sites are what we say."""
    model = _tiny(family).eval()
    adapter = adapter_for(model.config.model_type)
    sites = adapter.site_linears(model, 1)
    x = torch.randint(0, V, (2, 8))
    seen = {}
    for site in ("ffn_in", "ffn_intermediate"):
        sites[site][0][1].register_forward_pre_hook(
            lambda m, a, site=site: seen.setdefault(site, a[0])
        )
    with torch.no_grad():
        model(input_ids=x)
        x, act = seen["ffn_in"], seen["ffn_intermediate"]
        first = [m for _, m in sites["ffn_in"]]
        if family in ("llama", "mistral", "qwen2"):
            gate, up = first
            expected = torch.nn.functional.silu(gate(x)) * up(x)
        elif family == "opt":
            expected = torch.relu(first[0](x))
        elif family == "gpt2":
            expected = model.transformer.h[1].mlp.act(first[0](x))
        else:
            expected = model.encoder.layer[1].intermediate.intermediate_act_fn(first[0](x))
    torch.testing.assert_close(act, expected, rtol=1e-5, atol=1e-6)
    if family == "opt":
        assert (act == 0).float().mean() > 0.2  # ReLU: natural zeros


def test_unsupported_family_is_named():
    with pytest.raises(
        ValueError, match="unsupported model type 't5'.*supported: bert, gpt2, llama"
    ):
        adapter_for("t5")


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_loader_round_trips_save_pretrained_with_identical_logits(family, tmp_path):
    model = _tiny(family).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    loaded, adapter = load_model(tmp_path)
    x = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)
    assert adapter.name == {"llama": "llama", "opt": "opt", "gpt2": "gpt2"}[family]


def test_loader_refuses_paths_that_are_not_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="model path not found: ./no/such/dir"):
        load_model("./no/such/dir")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_model(str(f))
