"""Run a model with *predicted* masks: a predictors job's per-layer predictors, hooked on
the module whose input they read, choose the top-K units of the module they sparsify
(`PredictedInput`, the sparsity mechanism's `predicted` rule), in the same forward pass.
The oracle at the same sites and level (`oracle_plan`) is Deja Vu's contextual sparsity:
the top-K units by true magnitude."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actsparse.io import load_tensors
from actsparse.methods.predictors.base import PREDICTORS
from actsparse.methods.predictors.labels import layer_widths, predictor_io
from actsparse.methods.sparsity.contextual import known_skips
from actsparse.methods.sparsity.mechanism import Placed, Rule, SparsityPlan
from actsparse.methods.sparsity.ops import top_scores_mask
from actsparse.methods.sparsity.wrappers import PredictedInput, Sparsified, apply
from actsparse.models.adapters import FamilyAdapter, linear_shape, n_heads

META = "predictors.json"


@dataclass
class PredictorSet:
    folder: Path
    meta: dict[str, Any]
    modules: list[nn.Module]

    @property
    def target(self) -> str:
        return str(self.meta["target"])

    @property
    def flops_per_token(self) -> int:
        return int(sum(m.flops() for m in self.modules))  # type: ignore[operator]


def weights_path(folder: Path, layer: int) -> Path:
    return folder / "weights" / f"layer_{layer:03d}.safetensors"


def load_predictors(folder: str | Path, model, adapter: FamilyAdapter, device) -> PredictorSet:
    """A predictors job's predictors for `model`; refuses another model's, naming the layer."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise FileNotFoundError(f"not a predictors output: {folder} has no {META}")
    meta = json.loads((folder / META).read_text())
    where = f"predictors {meta['entry']!r} ({folder})"
    method = PREDICTORS.get(meta["method"])()
    if not method.evaluated:
        raise ValueError(f"{where}: {meta['method']} is a report, not a predictor")
    want = layer_widths(model, adapter, meta["target"])
    if len(want) != len(meta["widths"]):
        raise ValueError(
            f"{where}: predictors for {len(meta['widths'])} layers, the model has {len(want)}"
        )
    modules = []
    for layer, (got, exp) in enumerate(zip(meta["widths"], want, strict=True)):
        if tuple(got) != tuple(exp):
            raise ValueError(
                f"{where}: layer {layer}: predictor for (input width, units) {tuple(got)}, "
                f"the model has {tuple(exp)} (shape mismatch: another model's predictors?)"
            )
        tensors = load_tensors(weights_path(folder, layer)) if method.has_weights else None
        module = method.load(meta, tensors, model, adapter, layer, where)
        modules.append(module.to(device).eval())
    return PredictorSet(folder, meta, modules)


def _placed(pset: PredictorSet, model, adapter: FamilyAdapter, rule: Rule) -> list[Placed]:
    site = "heads" if pset.target == "heads" else "ffn_intermediate"
    out = []
    for layer in range(len(pset.modules)):
        _, dst = predictor_io(model, adapter, pset.target, layer)
        width = linear_shape(model.get_submodule(dst))[0]
        out.append(Placed(layer, site, dst, width, rule))
    return out


def predicted_plan(pset: PredictorSet, model, adapter: FamilyAdapter, level: float) -> SparsityPlan:
    heads = n_heads(model) if pset.target == "heads" else None
    placed = _placed(pset, model, adapter, Rule("predicted", level, n_heads=heads))
    skips = known_skips(model, adapter, placed)
    return SparsityPlan(pset.meta["method"], pset.meta["entry"], level, placed, skips)


def oracle_plan(pset: PredictorSet, model, adapter: FamilyAdapter, level: float) -> SparsityPlan:
    """Deja Vu's oracle at the same sites and level: top-K by |activation| or head norm."""
    if pset.target == "heads":
        rule = Rule("head_topk", level, n_heads=n_heads(model))
    else:
        rule = Rule("topk", level)
    placed = _placed(pset, model, adapter, rule)
    return SparsityPlan("contextual", "oracle", level, placed, known_skips(model, adapter, placed))


def apply_predicted(model, adapter: FamilyAdapter, pset: PredictorSet, level: float) -> Sparsified:
    """Wrap the sparsified modules and hook each predictor on its input module."""
    handle = apply(model, adapter, predicted_plan(pset, model, adapter, level))
    for layer, predictor in enumerate(pset.modules):
        src, dst = predictor_io(model, adapter, pset.target, layer)
        wrapper = handle.wrappers[dst]
        assert isinstance(wrapper, PredictedInput)

        def hook(mod, args, w=wrapper, p=predictor):
            if w.active:
                with torch.no_grad():
                    w.mask = top_scores_mask(p(args[0]), level)

        handle.hooks.append(model.get_submodule(src).register_forward_pre_hook(hook))
    return handle
