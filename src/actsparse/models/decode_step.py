"""One decode step of a Llama-family model written flat (as gpt-fast writes its model), over
a KV cache allocated once: what a batch-1 CPU decode spends outside the weight reads.

`transformers`' forward spends ~10 ms a step on a 30-block model on glue (cache objects,
masks, the output classes, a flash-attention call built for long queries); at 90% sparsity
that is more than the sparse weight reads themselves. This step calls the model's own
modules for everything that holds weights or a sparsity wrapper (the norms, the four
attention linears, the FFN module, the LM head), so a plan applied to the model, a kernel
swapped in for a linear or an FFN, or a hook on a norm act here as in the model's forward; only the glue between them is rewritten: rotary embedding by the model's own
`rotary_emb`, attention of one query over the filled part of a preallocated cache.

Its logits equal the model's forward's (tests/unit/test_decode_step.py); families other
than Llama's, and configs it does not cover, keep the model's forward (`supports`).
"""

from __future__ import annotations

import torch
from torch import nn

FLAT_MODEL_TYPES = ("llama", "mistral", "qwen2")


def supports(model: nn.Module, max_len: int) -> str:
    """'' when `FlatDecoder` can run `model` up to `max_len` positions, else why not."""
    cfg = model.config
    if cfg.model_type not in FLAT_MODEL_TYPES:
        return f"model type {cfg.model_type!r} (flat decode: {', '.join(FLAT_MODEL_TYPES)})"
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True) and max_len > window:
        return f"{max_len} positions exceed the sliding window of {window}"
    if not hasattr(model, "lm_head") or not hasattr(getattr(model, "model", None), "rotary_emb"):
        return "not a causal LM with a rotary embedding (model.model.rotary_emb)"
    return ""


def _rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """R (hd, hd) with x R = x cos + rotate_half(x) sin, the Llama rotary embedding of one
    position (rotate_half(x) = (-x[h:], x[:h]), h = hd / 2): two entries a column."""
    hd = cos.numel()
    half = torch.arange(hd // 2, device=cos.device)
    rot = torch.diag(cos)
    rot[half + hd // 2, half] = -sin[: hd // 2]
    rot[half, half + hd // 2] = sin[hd // 2 :]
    return rot


class FlatDecoder:
    """Prefill once with the model's forward, then `step(token)` decodes one token (batch
    1) and returns its logits (1, vocab). The cache holds `max_len` positions."""

    def __init__(self, model: nn.Module, max_len: int):
        why = supports(model, max_len)
        if why:
            raise ValueError(f"flat decode does not cover this model: {why}")
        cfg = model.config
        self.model = model
        self.blocks = list(model.model.layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(
            getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        )
        self.scale = float(getattr(self.blocks[0].self_attn, "scaling", self.head_dim**-0.5))
        p = next(model.parameters())
        self.dtype = p.dtype
        # attention in float32 at least: a half-precision model's keys, queries and scores
        # are rounded as attention kernels round them (each product once), and CPU matmuls
        # of a few heads are 5x slower in bfloat16 than in float32
        self.work = torch.promote_types(p.dtype, torch.float32)
        shape = (len(self.blocks), self.n_kv, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.work, device=p.device)
        self.v_cache = torch.zeros(shape, dtype=self.work, device=p.device)
        self.max_len = max_len
        self.pos = 0

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt `ids` (1, T) through the model's forward and keep its keys and
        values; returns the last position's logits."""
        if ids.shape[0] != 1 or ids.shape[1] > self.max_len:
            raise ValueError(f"prefill takes (1, T <= {self.max_len}) ids, got {tuple(ids.shape)}")
        out = self.model(input_ids=ids, use_cache=True)
        t = ids.shape[1]
        cache = out.past_key_values
        for i in range(len(self.blocks)):
            k, v = _layer_kv(cache, i)
            self.k_cache[i, :, :t] = k[0]
            self.v_cache[i, :, :t] = v[0]
        self.pos = t
        return out.logits[:, -1]

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        if self.pos >= self.max_len:
            raise ValueError(f"the cache is full ({self.max_len} positions)")
        m = self.model.model
        pos = self.pos
        h = m.embed_tokens(token.reshape(1, 1))  # (1, 1, d)
        cos, sin = m.rotary_emb(h, torch.tensor([[pos]], device=h.device))
        rot = _rotation(cos.reshape(-1).to(self.work), sin.reshape(-1).to(self.work))
        rot_q = rot * self.scale  # the attention's 1/sqrt(d) folded into the queries' rotation
        g = self.n_heads // self.n_kv
        for i, block in enumerate(self.blocks):
            attn = block.self_attn
            a = block.input_layernorm(h)
            # rotary embedding as one product per step: x R = x cos + rotate_half(x) sin
            q = attn.q_proj(a).view(self.n_heads, self.head_dim).to(self.work) @ rot_q
            k = attn.k_proj(a).view(self.n_kv, self.head_dim).to(self.work) @ rot
            self.k_cache[i, :, pos] = k
            self.v_cache[i, :, pos] = attn.v_proj(a).view(self.n_kv, self.head_dim)
            keys = self.k_cache[i, :, : pos + 1]  # (kv, T, hd)
            values = self.v_cache[i, :, : pos + 1]
            # grouped queries: the g query heads of a kv head attend together
            qg = q.view(self.n_kv, g, self.head_dim)
            scores = torch.matmul(qg, keys.transpose(1, 2))  # (kv, g, T), scaled by rot_q
            probs = torch.softmax(scores, dim=-1)
            o = torch.matmul(probs, values).reshape(1, 1, self.n_heads * self.head_dim)
            o = o.to(self.dtype)
            h = h + attn.o_proj(o)
            # the FFN module itself: a kernel may stand in for it (the neuron-sparse FFN)
            h = h + block.mlp(block.post_attention_layernorm(h))
        self.pos += 1
        return self.model.lm_head(m.norm(h))[:, -1]


def _layer_kv(cache, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block i's keys and values (1, kv, T, hd) from a `transformers` cache."""
    layer = cache.layers[i] if hasattr(cache, "layers") else None
    if layer is not None and hasattr(layer, "keys"):
        return layer.keys, layer.values
    return cache[i][0], cache[i][1]
