"""Predictor labels: which FFN neurons are active and which attention heads matter, per
token, with the input a predictor reads, collected from the model and streamed to disk.

- MLP (target `mlp`): the input is what the FFN's first projection reads (`ffn_in`); the
  label of neuron j is computed from the FFN intermediate activation `a` (what the down
  projection reads):
  - `positive`: `a_j > 0` (ReLU models: the neuron fired);
  - `topk`: `a_j` is among the `int((1 - label_level) d_ff)` largest |a| of its token;
  - `threshold`: `|a_j| > t`, `t` the calibrated threshold of the site at `label_level`
    (TEAL's `P(|a| < t) = label_level`, from the calibrate stage's histogram);
  - `auto`: `positive` for ReLU families, `topk` otherwise.
- Heads (target `heads`): the input is the attention input of the *previous* layer
  (Deja Vu's lookahead: the prediction can run while that layer computes; layer 0 has no
  previous layer and reads its own); head h is labelled when its output norm (its slice of
  the o_proj input) is among the `int((1 - label_level) H)` largest of its token.

Per layer and split, `<split>/layer_XXX_x.npy` holds the inputs (float16), `_y.npy` the
labels as packed bits (`np.packbits` along the unit axis) and, for held-out splits,
`_m.npy` the magnitudes the oracle ranks by (|a| or head norms, float16). Files are
written by appending one batch at a time (`NpyWriter`) and read back as memory maps:
memory holds one batch of activations, never the split.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actsparse.io import write_text
from actsparse.methods.sparsity.ops import topk_mask
from actsparse.models.adapters import FamilyAdapter, linear_shape, n_heads

LABEL_RULES = ("auto", "positive", "topk", "threshold")
TARGETS = ("mlp", "heads")


def mlp_labels(
    act: torch.Tensor, rule: str, level: float, threshold: float | None = None
) -> torch.Tensor:
    """Boolean labels (..., d_ff) of the FFN intermediate activation `act` (see module doc)."""
    if rule == "positive":
        return act > 0
    if rule == "topk":
        return topk_mask(act, level)
    if rule == "threshold":
        if threshold is None:
            raise ValueError("threshold labels need a calibrated threshold")
        return act.abs() > threshold
    raise ValueError(f"unknown label rule {rule!r}; rules: positive, topk, threshold")


def head_norms(o_in: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., H) output norm of each head from the concatenated head outputs (..., H * hd)."""
    d = o_in.shape[-1]
    if d % heads:
        raise ValueError(f"width {d} is not divisible by {heads} heads")
    return o_in.reshape(*o_in.shape[:-1], heads, d // heads).float().norm(dim=-1)


def head_labels(o_in: torch.Tensor, heads: int, level: float) -> torch.Tensor:
    """Boolean (..., H): the `int((1 - level) H)` heads of largest output norm per token."""
    return topk_mask(head_norms(o_in, heads), level)


def resolve_rule(rule: str, adapter: FamilyAdapter) -> str:
    if rule == "auto":
        return "positive" if adapter.activation == "relu" else "topk"
    return rule


def lookahead_layer(layer: int) -> int:
    """The layer whose attention input a head predictor of `layer` reads."""
    return max(layer - 1, 0)


def predictor_io(model, adapter: FamilyAdapter, target: str, layer: int) -> tuple[str, str]:
    """(module whose input the predictor reads, module whose input the mask sparsifies)."""
    if target == "mlp":
        linears = adapter.site_linears(model, layer)
        return linears["ffn_in"][0][0], linears["ffn_intermediate"][0][0]
    src = adapter.site_linears(model, lookahead_layer(layer))["attn_in"][0][0]
    return src, adapter.site_linears(model, layer)["o_proj_in"][0][0]


def layer_widths(model, adapter: FamilyAdapter, target: str) -> list[tuple[int, int]]:
    """(predictor input width, number of units: neurons or heads) per layer."""
    out = []
    for layer in range(len(adapter.layers(model))):
        src, dst = predictor_io(model, adapter, target, layer)
        d_in = linear_shape(model.get_submodule(src))[0]
        units = n_heads(model) if target == "heads" else linear_shape(model.get_submodule(dst))[0]
        out.append((d_in, units))
    return out


@dataclass
class LabelSpec:
    target: str  # mlp | heads
    rule: str  # mlp: positive | topk | threshold (resolved); heads: topk
    level: float  # label_level (topk / threshold rules, heads)
    thresholds: list[float] | None = None  # threshold rule: one per layer


def label_spec(mcfg, target: str, adapter: FamilyAdapter, stats, n_layers: int) -> LabelSpec:
    """What a predictor entry labels: heads by top-K, MLP neurons by its `label` rule
    (threshold labels read their thresholds from `stats`, the calibrate job's)."""
    if target == "heads":
        return LabelSpec("heads", "topk", mcfg.label_level)
    rule = resolve_rule(mcfg.label, adapter)
    thresholds = None
    if rule == "threshold":
        if stats is None:
            raise ValueError("threshold labels need the calibrate job's histograms (input)")
        thresholds = [
            stats.threshold(layer, "ffn_intermediate", mcfg.label_level)
            for layer in range(n_layers)
        ]
    return LabelSpec("mlp", rule, mcfg.label_level, thresholds)


class LabelSet:
    """A folder of collected labels (see module doc), read as memory maps."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "labels.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"not a labels folder: {self.folder} has no labels.json")
        self.meta = json.loads(meta_path.read_text())
        self.widths = [tuple(w) for w in self.meta["widths"]]

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    def n_tokens(self, split: str) -> int:
        return int(self.meta["splits"][split])

    def array(self, split: str, layer: int, part: str) -> np.ndarray:
        return np.load(self.folder / split / f"layer_{layer:03d}_{part}.npy", mmap_mode="r")

    def labels(self, split: str, layer: int, rows) -> np.ndarray:
        """Boolean labels (len(rows), units) of the given rows (unpacked)."""
        units = self.widths[layer][1]
        packed = self.array(split, layer, "y")[rows]
        return np.unpackbits(packed, axis=-1, count=units).astype(bool)

    def check(self, model, adapter: FamilyAdapter, who: str = "labels") -> None:
        """Refuse labels collected from another model: layer count and widths must match."""
        want = layer_widths(model, adapter, self.meta["target"])
        if len(want) != self.n_layers:
            raise ValueError(
                f"{who}: {self.folder} has labels for {self.n_layers} layers, the model has "
                f"{len(want)} (labels from another model?)"
            )
        for layer, (got, exp) in enumerate(zip(self.widths, want, strict=True)):
            if got != exp:
                raise ValueError(
                    f"{who}: layer {layer}: labels in {self.folder} have (input width, units) "
                    f"{got}, the model {exp} (shape mismatch: labels from another model?)"
                )


class NpyWriter:
    """An `.npy` file of a known shape written by appending rows: its header first, then
    each batch's bytes (no memory map: written pages are not held by the process)."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, int]):
        self.path, self.dtype, self.shape, self.rows = path, dtype, shape, 0
        self.f = open(path, "wb")  # noqa: SIM115 (closed in close())
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": shape}  # fmt: skip
        np.lib.format.write_array_header_1_0(self.f, header)

    def write(self, rows: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self.f.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows of {self.shape[0]}")


@torch.no_grad()
def collect(
    model,
    adapter: FamilyAdapter,
    windows: torch.Tensor,
    spec: LabelSpec,
    folder: Path,
    split: str,
    batch_size: int,
    magnitudes: bool = False,
) -> None:
    """Run `model` on `windows` (n, T) and stream every layer's predictor inputs and labels
    to `folder/split/` (and the oracle's magnitudes when `magnitudes`); then record the split
    in `folder/labels.json`."""
    n_layers = len(adapter.layers(model))
    widths = layer_widths(model, adapter, spec.target)
    n_rows = windows.numel()
    out = folder / split
    out.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[int, str], NpyWriter] = {}
    for layer, (d_in, units) in enumerate(widths):
        parts = {"x": (np.float16, d_in), "y": (np.uint8, (units + 7) // 8)}
        if magnitudes:
            parts["m"] = (np.float16, units)
        for part, (dtype, width) in parts.items():
            path = out / f"layer_{layer:03d}_{part}.npy"
            files[(layer, part)] = NpyWriter(path, np.dtype(dtype), (n_rows, width))
    cache: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []

    def grab(key):
        def hook(mod, args):
            cache[key] = args[0].detach()

        return hook

    for layer in range(n_layers):
        # heads: every layer's own attention input is hooked; layer l reads layer l-1's
        src = (
            predictor_io(model, adapter, "mlp", layer)[0]
            if spec.target == "mlp"
            else (adapter.site_linears(model, layer)["attn_in"][0][0])
        )
        dst = predictor_io(model, adapter, spec.target, layer)[1]
        hooks.append(model.get_submodule(src).register_forward_pre_hook(grab(("x", layer))))
        hooks.append(model.get_submodule(dst).register_forward_pre_hook(grab(("a", layer))))
    device = next(model.parameters()).device
    heads = n_heads(model)
    row = 0
    try:
        for start in tqdm(
            range(0, len(windows), batch_size), desc=f"labels {split}", unit="batch", mininterval=2
        ):
            x = windows[start : start + batch_size].to(device)
            cache.clear()
            model(input_ids=x, use_cache=False)
            n = x.numel()
            for layer in range(n_layers):
                src = layer if spec.target == "mlp" else lookahead_layer(layer)
                inp = cache[("x", src)].reshape(n, -1)
                act = cache[("a", layer)].reshape(n, -1)
                if spec.target == "mlp":
                    t = spec.thresholds[layer] if spec.thresholds else None
                    lab = mlp_labels(act, spec.rule, spec.level, t)
                    mag = act.abs()
                else:
                    mag = head_norms(act, heads)
                    lab = topk_mask(mag, spec.level)
                files[(layer, "x")].write(inp.float().cpu().numpy())
                files[(layer, "y")].write(np.packbits(lab.cpu().numpy(), axis=-1))
                if magnitudes:
                    files[(layer, "m")].write(mag.float().cpu().numpy())
            row += n
    finally:
        for h in hooks:
            h.remove()
    for f in files.values():
        f.close()
    meta_path = folder / "labels.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update({**asdict(spec), "widths": [list(w) for w in widths]})
    meta.setdefault("splits", {})[split] = n_rows
    write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
