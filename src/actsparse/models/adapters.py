"""Family adapters: map a Hugging Face architecture to its blocks and activation *sites*.

A site is an activation that one or more linear layers read:
- `attn_in`: the (normed) block input read by q/k/v;
- `o_proj_in`: the attention output read by o_proj (the heads, concatenated);
- `ffn_in`: the (normed) input read by the FFN's first projection(s);
- `ffn_intermediate`: the FFN's hidden activation read by its down projection.
The model's own forward code is never copied: stages hook the named linear modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

SITES = ("attn_in", "o_proj_in", "ffn_in", "ffn_intermediate")


@dataclass(frozen=True)
class FamilyAdapter:
    name: str
    model_types: tuple[str, ...]
    layers_path: str  # attribute path from the *ForCausalLM module to the block list
    linears: dict[str, tuple[str, ...]]  # site -> linear modules (relative to a block) reading it
    activation: str  # the FFN nonlinearity, for reports

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)  # type: ignore[return-value]

    def site_linears(self, model: nn.Module, layer: int) -> dict[str, list[tuple[str, nn.Module]]]:
        """site -> [(full module name, module)] for one block."""
        prefix = f"{self.layers_path}.{layer}"
        return {
            site: [(f"{prefix}.{rel}", model.get_submodule(f"{prefix}.{rel}")) for rel in rels]
            for site, rels in self.linears.items()
        }


_LLAMA_LINEARS = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj_in": ("self_attn.o_proj",),
    "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_intermediate": ("mlp.down_proj",),
}

ADAPTERS = [
    FamilyAdapter("llama", ("llama", "mistral", "qwen2"), "model.layers", _LLAMA_LINEARS, "swiglu"),
    FamilyAdapter(
        "opt",
        ("opt",),
        "model.decoder.layers",
        {
            "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "o_proj_in": ("self_attn.out_proj",),
            "ffn_in": ("fc1",),
            "ffn_intermediate": ("fc2",),
        },
        "relu",
    ),
    FamilyAdapter(
        "gpt2",
        ("gpt2",),
        "transformer.h",
        {  # Conv1D layers: weights are (in, out); q/k/v are one fused c_attn
            "attn_in": ("attn.c_attn",),
            "o_proj_in": ("attn.c_proj",),
            "ffn_in": ("mlp.c_fc",),
            "ffn_intermediate": ("mlp.c_proj",),
        },
        "gelu",
    ),
]


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str) -> FamilyAdapter:
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    raise ValueError(
        f"unsupported model type {model_type!r}; supported: {', '.join(supported_model_types())}"
    )


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of nn.Linear or transformers' Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = module.weight  # Conv1D stores (in, out)
    return int(weight.shape[0]), int(weight.shape[1])
