"""Helpers shared by the test tiers (importable as `helpers`)."""

from __future__ import annotations

from pathlib import Path


def smoke_plan(tmp: Path, *overrides: str):
    """The smoke study's plan with outputs under `tmp`."""
    from actsparse.config import compose_study
    from actsparse.plan import StudyPlan

    return StudyPlan(compose_study(["experiment=smoke", f"study.output_root={tmp}", *overrides]))


TINY_D, TINY_F, TINY_V = 16, 40, 64
FAMILIES = ["llama", "mistral", "qwen2", "opt", "gpt2", "bert"]


def tiny_model(family: str, seed: int = 0):
    """A tiny random model of a Hugging Face family (2 blocks, 4 heads, GQA where it exists)."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    D, F, V = TINY_D, TINY_F, TINY_V
    common = dict(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=F,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**common)).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if family == "opt":
        cfg = OPTConfig(
            vocab_size=V,
            hidden_size=D,
            ffn_dim=F,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            word_embed_proj_dim=D,
        )
        return OPTForCausalLM(cfg).eval()
    if family == "gpt2":
        cfg = GPT2Config(
            vocab_size=V,
            n_embd=D,
            n_inner=F,
            n_layer=2,
            n_head=4,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPT2LMHeadModel(cfg).eval()
    if family == "bert":
        cfg = BertConfig(
            vocab_size=V,
            hidden_size=D,
            intermediate_size=F,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
        )
        return BertModel(cfg, add_pooling_layer=False).eval()
    raise KeyError(family)


def tiny_llama_with_norms():
    """A float64 tiny Llama whose RMSNorm weights are not ones: what folding them into the
    weights (LaRoSA's residual form, WINA's transform) must get right."""
    import torch

    model = tiny_model("llama").double()
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data = 0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype)
    return model


def final_output(model, x):
    """Logits of a causal LM, the last hidden state of an encoder."""
    out = model(input_ids=x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class Covariances:
    """A stand-in for a calibrate job's statistics where only covariances are read
    (LaRoSA): the dense model's `X^T X / T` of each linear-input site, on random tokens."""

    def __init__(self, model, adapter):
        import torch

        from actsparse.models.adapters import LINEAR_SITES

        g = torch.Generator().manual_seed(0)
        self.grams = {}
        hooks = []
        for layer in range(len(adapter.layers(model))):
            for site in LINEAR_SITES:
                _, module = adapter.site_linears(model, layer)[site][0]

                def grab(m, a, key=(layer, site)):
                    x = a[0].reshape(-1, a[0].shape[-1]).double()
                    self.grams[key] = x.T @ x / len(x)

                hooks.append(module.register_forward_pre_hook(grab))
        with torch.no_grad():
            model(input_ids=torch.randint(0, TINY_V, (8, 16), generator=g))
        for h in hooks:
            h.remove()

    def gram(self, layer, site):
        return self.grams[(layer, site)]

    def check_model(self, *args) -> None:
        """Computed from the very model it is used with."""
