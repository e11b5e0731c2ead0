"""Low-rank linears inside an unmodified `transformers` model, saved and reloaded.

`LowRankLinear` replaces a block linear (nn.Linear or GPT-2's Conv1D) by `up(down(x))`
with `down: n -> k` (no bias) and `up: k -> m` (the original bias). A compressed model is
saved with `save_pretrained` (safetensors; the state dict names the factors
`<linear>.down.weight`, `<linear>.up.weight`) beside `lowrank.json`, which lists each
replaced linear and its rank. `load_lowrank` rebuilds the architecture from `config.json`,
swaps the same linears and loads the weights strictly: the one loader
(`actsparse.models.load_model`) takes this path whenever `lowrank.json` is present.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from actsparse.io import write_text

FORMAT = "actsparse-lowrank/1"
MANIFEST = "lowrank.json"


class LowRankLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(
        cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor
    ) -> LowRankLinear:
        """`W' = A B` with `A (m, k)`, `B (k, n)`, in the dtype and device of `like`."""
        (m, k), n = A.shape, B.shape[1]
        mod = cls(n, m, k, bias is not None).to(device=like.device, dtype=like.dtype)
        with torch.no_grad():
            mod.down.weight.copy_(B)
            mod.up.weight.copy_(A)
            if bias is not None:
                mod.up.bias.copy_(bias)
        return mod

    @property
    def weight(self) -> torch.Tensor:
        """The dense equivalent `A B` (m, n), for code that reads a linear's weight."""
        return self.up.weight @ self.down.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def n_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


def dense_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W (out, in), bias) of nn.Linear or transformers' Conv1D (which stores (in, out))."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if isinstance(module, LowRankLinear):
        raise ValueError("this linear is already low-rank")
    return module.weight.T, module.bias


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def save_lowrank(model: nn.Module, folder: Path, info: dict) -> None:
    """`save_pretrained` plus `lowrank.json` (which linears are low-rank, their ranks)."""
    modules = {
        name: {
            "in": m.in_features,
            "out": m.out_features,
            "rank": m.rank,
            "bias": m.bias is not None,
        }
        for name, m in model.named_modules()
        if isinstance(m, LowRankLinear)
    }
    model.save_pretrained(folder)
    manifest = {"format": FORMAT, **info, "modules": modules}
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def is_lowrank(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_lowrank(folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """Rebuild a model saved by `save_lowrank`: same architecture, same linears swapped,
    every tensor loaded strictly (a missing or unexpected factor is an error naming it)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / MANIFEST}: unknown format {manifest.get('format')!r}")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, spec in manifest["modules"].items():
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{folder / MANIFEST}: the model has no linear {name!r}") from None
        new = LowRankLinear(spec["in"], spec["out"], spec["rank"], spec["bias"]).to(dtype)
        replace(model, name, new)
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(folder / f))
    tied = {k for k in model.state_dict() if k not in state and _is_tied(model, k)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{folder}: weights do not match lowrank.json: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    if tied:
        model.tie_weights()
    return model


def _is_tied(model: nn.Module, key: str) -> bool:
    """An output-embedding weight shared with the input embeddings (saved once)."""
    head = model.get_output_embeddings()
    return (
        bool(getattr(model.config, "tie_word_embeddings", False))
        and head is not None
        and key.endswith("weight")
        and model.get_submodule(key.rsplit(".", 1)[0]) is head
    )
