"""Family adapters: map a Hugging Face architecture to its blocks and activation *sites*.

A site is an activation that sparsity rules act on and calibration measures:
- `attn_in`: the block's attention input read by q/k/v;
- `o_proj_in`: the attention output read by o_proj (the heads, concatenated);
- `ffn_in`: the FFN's input read by its first projection(s);
- `ffn_intermediate`: the FFN's hidden activation read by its down projection;
- `gate`: the gate branch `act(gate_proj x)` of a gated (GLU) FFN; non-gated FFNs
  (OPT, GPT-2, BERT) have no gate: there `act(fc1 x)` *is* `ffn_intermediate`;
- `heads`: the attention heads, i.e. `o_proj_in` seen as `n_heads` slices.
The first four are *linear-input* sites: the input of named linear modules. `gate` is the
output of the FFN's nonlinearity module. The model's own forward code is never copied:
stages hook or wrap these named modules of an unmodified `transformers` model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

LINEAR_SITES = ("attn_in", "o_proj_in", "ffn_in", "ffn_intermediate")
SITES = (*LINEAR_SITES, "gate", "heads")


@dataclass(frozen=True)
class FamilyAdapter:
    name: str
    model_types: tuple[str, ...]
    layers_path: str  # attribute path from the base model (model.base_model) to the blocks
    linears: dict[str, tuple[str, ...]]  # linear-input site -> linears reading it (per block)
    activation: str  # the FFN nonlinearity, for reports
    act_path: str  # the FFN nonlinearity module, relative to a block
    gate_linear: str | None = None  # gated FFNs: the projection whose output goes through act
    up_linear: str | None = None  # gated FFNs: the projection multiplied by act(gate)
    # pre-norm RMSNorm families: linear-input site -> the norm whose output it is (relative
    # to a block); an orthogonal rotation of the residual stream commutes with these
    # (LaRoSA's residual form), not with LayerNorm's mean and bias
    rms_norms: dict[str, str] = field(default_factory=dict)

    @property
    def gated(self) -> bool:
        return self.gate_linear is not None

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(s for s in SITES if s != "gate" or self.gated)

    def prefix(self, model: nn.Module) -> str:
        """Module-name prefix of the base model inside `model` ('' for a bare base model)."""
        base = getattr(model, "base_model", model)
        return "" if base is model else f"{model.base_model_prefix}."

    def block_path(self, model: nn.Module, layer: int) -> str:
        return f"{self.prefix(model)}{self.layers_path}.{layer}"

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(f"{self.prefix(model)}{self.layers_path}")  # type: ignore[return-value]

    def site_linears(self, model: nn.Module, layer: int) -> dict[str, list[tuple[str, nn.Module]]]:
        """linear-input site -> [(full module name, module)] for one block."""
        prefix = self.block_path(model, layer)
        return {
            site: [(f"{prefix}.{rel}", model.get_submodule(f"{prefix}.{rel}")) for rel in rels]
            for site, rels in self.linears.items()
        }

    def rms_norm_weight(self, model: nn.Module, layer: int, site: str) -> torch.Tensor:
        """The weight of the RMSNorm whose output `site` is, in block `layer`."""
        if site not in self.rms_norms:
            raise ValueError(f"model family {self.name!r} has no RMSNorm in front of {site!r}")
        norm = model.get_submodule(f"{self.block_path(model, layer)}.{self.rms_norms[site]}")
        return norm.weight.detach()

    def act_module(self, model: nn.Module, layer: int) -> tuple[str, nn.Module]:
        name = f"{self.block_path(model, layer)}.{self.act_path}"
        return name, model.get_submodule(name)

    def check_site(self, site: str, who: str = "") -> None:
        """Raise a clear error if this family lacks `site`."""
        if site in self.sites:
            return
        who = f"{who}: " if who else ""
        if site == "gate":
            raise ValueError(
                f"{who}model family {self.name!r} has no site 'gate': its FFN is not gated "
                f"({self.activation}); there act(fc1 x) is the site 'ffn_intermediate'"
            )
        raise ValueError(
            f"{who}unknown site {site!r}; sites of {self.name!r}: {', '.join(self.sites)}"
        )


def n_heads(model: nn.Module) -> int:
    return int(model.config.num_attention_heads)


_LLAMA_LINEARS = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj_in": ("self_attn.o_proj",),
    "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_intermediate": ("mlp.down_proj",),
}

ADAPTERS = [
    FamilyAdapter(
        "llama",
        ("llama", "mistral", "qwen2"),
        "layers",
        _LLAMA_LINEARS,
        "swiglu",
        act_path="mlp.act_fn",
        gate_linear="mlp.gate_proj",
        up_linear="mlp.up_proj",
        rms_norms={"attn_in": "input_layernorm", "ffn_in": "post_attention_layernorm"},
    ),
    FamilyAdapter(
        "opt",
        ("opt",),
        "decoder.layers",
        {
            "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "o_proj_in": ("self_attn.out_proj",),
            "ffn_in": ("fc1",),
            "ffn_intermediate": ("fc2",),
        },
        "relu",
        act_path="activation_fn",
    ),
    FamilyAdapter(
        "gpt2",
        ("gpt2",),
        "h",
        {  # Conv1D layers: weights are (in, out); q/k/v are one fused c_attn
            "attn_in": ("attn.c_attn",),
            "o_proj_in": ("attn.c_proj",),
            "ffn_in": ("mlp.c_fc",),
            "ffn_intermediate": ("mlp.c_proj",),
        },
        "gelu",
        act_path="mlp.act",
    ),
    FamilyAdapter(
        "bert",
        ("bert", "roberta"),
        "encoder.layer",
        {  # post-LN encoder: attn_in is the block input itself
            "attn_in": ("attention.self.query", "attention.self.key", "attention.self.value"),
            "o_proj_in": ("attention.output.dense",),
            "ffn_in": ("intermediate.dense",),
            "ffn_intermediate": ("output.dense",),
        },
        "gelu",
        act_path="intermediate.intermediate_act_fn",
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
    """(in_features, out_features) of nn.Linear, a LowRankLinear or transformers' Conv1D
    (wrapped by a sparsity wrapper or not)."""
    module = getattr(module, "inner", module)  # a sparsity wrapper: the linear inside
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    weight = module.weight  # Conv1D stores (in, out)
    return int(weight.shape[0]), int(weight.shape[1])


@torch.no_grad()
def input_column_norms(
    module: nn.Module, basis: torch.Tensor | None = None, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """`||W[:, i]||_2` for each input channel `i` of a linear (wrapped or not): nn.Linear
    and LowRankLinear hold W as (out, in) (LowRankLinear's `weight` is the dense `A B`),
    transformers' Conv1D as (in, out). With a `basis` Q (and a `scale` g), the columns of
    `W diag(g) Q`, the weight that reads the rotated input (computed in float64)."""
    weight = dense_input_weight(module)
    if basis is None and scale is None:
        return weight.norm(dim=0)
    w = weight.double() if scale is None else weight.double() * scale.double()
    w = w if basis is None else w @ basis.double()
    return w.norm(dim=0).to(weight.dtype)


def dense_input_weight(module: nn.Module) -> torch.Tensor:
    """A linear's weight as (out, in), whatever wraps it and however it stores it."""
    while hasattr(module, "inner"):  # a sparsity wrapper, or a decode kernel around it
        module = module.inner
    w = module.weight
    return w.T if type(module).__name__ == "Conv1D" else w


def linear_rank(module: nn.Module) -> int:
    """The rank of a low-rank linear; 0 for a dense one."""
    return int(getattr(getattr(module, "inner", module), "rank", 0))


def linear_params(module: nn.Module) -> int:
    """Weights a linear holds (and reads per token): `n m`, or `k (n + m)` when low-rank."""
    module = getattr(module, "inner", module)
    if hasattr(module, "n_params"):
        return int(module.n_params())
    n_in, n_out = linear_shape(module)
    return n_in * n_out
