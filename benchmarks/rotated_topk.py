"""What a rotation does to top-K at the block inputs of a real model: per linear reading the
attention or the FFN input, the relative output error `||W x - W x_hat|| / ||W x||` at
level `s` of the rule in four bases, measured on the model's own activations.

- `magnitude`: top-K by |x| (Q-Sparse post hoc) in the norm's output basis;
- `wina`: top-K by |x_i| ||W[:, i]|| in that basis (WINA without its transform);
- `wina_transform`: WINA in the basis of its code's tensor transform, `(x / g) V`, `V` the
  right singular vectors of k_proj's (attention) or the gate's (FFN) `W diag(g)`, scored
  with the columns of `W diag(g) V`;
- `pca`: top-K by magnitude in the PCA basis of the normalised stream `u = x / g`
  (LaRoSA's residual form), the basis fitted on the first half of the tokens and measured
  on the second.

Also the share of `||x||^2` each basis puts on its top 1% of channels (how concentrated
the activation is there). It explains the SmolLM2 table in docs/models.md: WINA's
transform raises its perplexity increase at 40% from +17% to +37%.

    python benchmarks/rotated_topk.py ../study-smollm2/data/smollm2/import_gguf/smollm2-*/model \\
        ../study-smollm2/data/smollm2/data/wikitext2.smollm2-* --tokens 2048 --level 0.5

Prints the table (mean over layers per linear and basis) and writes
benchmarks/results/rotated_topk.parquet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from provenance import append_rows, provenance
from tqdm import tqdm

from actsparse.data import TokenData
from actsparse.methods.sparsity import ops
from actsparse.models import load_model
from actsparse.models.adapters import dense_input_weight

SVD_OF = {"attn_in": "self_attn.k_proj", "ffn_in": "mlp.gate_proj"}  # as WINA's code


def capture(
    model, adapter, tokens: torch.Tensor, seq_len: int
) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, site) -> the site's activations (tokens, width), float64."""
    out: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for layer in range(len(adapter.layers(model))):
        for site in SVD_OF:
            _, first = adapter.site_linears(model, layer)[site][0]

            def grab(m, a, key=(layer, site)):
                out.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]).double())

            hooks.append(first.register_forward_pre_hook(grab))
    with torch.no_grad():
        for start in range(0, len(tokens) - seq_len + 1, seq_len):
            model(input_ids=tokens[start : start + seq_len][None])
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in out.items()}


def rel_err(W: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(((x - x_hat) @ W.T).norm() / (x @ W.T).norm())


def top_share(z: torch.Tensor) -> float:
    """Share of the energy on the top 1% of channels (by mean square)."""
    e = (z**2).mean(0)
    k = max(1, len(e) // 100)
    return float(e.topk(k).values.sum() / e.sum())


@torch.no_grad()
def measure(model, adapter, acts, level: float) -> pd.DataFrame:
    rows = []
    for (layer, site), x in tqdm(sorted(acts.items()), desc="layers"):
        block = adapter.block_path(model, layer)
        g = adapter.rms_norm_weight(model, layer, site).double()
        u = x / g
        fit, test = u[: len(u) // 2], u[len(u) // 2 :]
        xt = test * g
        pca = torch.linalg.eigh(fit.T @ fit)[1].flip(-1)
        src = dense_input_weight(model.get_submodule(f"{block}.{SVD_OF[site]}")).double()
        V = torch.linalg.svd(src * g, full_matrices=True)[2].T
        shares = {"magnitude": top_share(xt), "pca": top_share(test @ pca),
                  "wina_transform": top_share(test @ V)}  # fmt: skip
        for name, lin in adapter.site_linears(model, layer)[site]:
            W = dense_input_weight(lin).double()
            Wv = (W * g) @ V
            z = test @ V
            hats = {
                "magnitude": ops.topk(xt, level),
                "wina": ops.weighted_topk(xt, W.norm(dim=0), level),
                "wina_transform": (ops.weighted_topk(z, Wv.norm(dim=0), level) @ V.T) * g,
                "pca": (ops.topk(test @ pca, level) @ pca.T) * g,
            }
            for basis, x_hat in hats.items():
                rows.append({"layer": layer, "site": site, "linear": name.rsplit(".", 1)[1],
                             "basis": basis, "level": level, "rel_err": rel_err(W, xt, x_hat),
                             "top1pct_energy": shares.get(basis, shares["magnitude"])})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "model", type=Path, help="a save_pretrained folder (e.g. an import_gguf job's model/)"
    )
    p.add_argument("data", type=Path, help="the data job's folder with the model's tokens")
    p.add_argument("--tokens", type=int, default=2048, help="test tokens (windows of --seq-len)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--level", type=float, default=0.5)
    args = p.parse_args()
    model, adapter = load_model(str(args.model), dtype="float32")
    tokens = torch.as_tensor(TokenData(args.data).tokens("test")[: args.tokens])
    table = measure(model, adapter, capture(model, adapter, tokens, args.seq_len), args.level)
    summary = table.groupby(["site", "linear", "basis"], sort=False)[["rel_err", "top1pct_energy"]]
    print(summary.mean().unstack("basis").round(3).to_string())
    append_rows(table.assign(**provenance()), "rotated_topk")


if __name__ == "__main__":
    main()
