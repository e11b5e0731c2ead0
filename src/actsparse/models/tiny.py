"""Tiny Hugging Face models built from `conf/model/*.yaml` for studies on a laptop.

They are ordinary `LlamaForCausalLM` / `OPTForCausalLM` instances, so tiny and real models
take the same code path in every stage.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedModel

from actsparse.schema.models import ModelCfg


def build_tiny(cfg: ModelCfg, vocab_size: int, bos_id: int, eos_id: int) -> PreTrainedModel:
    a = cfg.arch
    if cfg.family == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=a.hidden_size,
            intermediate_size=a.intermediate_size,
            num_hidden_layers=a.num_hidden_layers,
            num_attention_heads=a.num_attention_heads,
            num_key_value_heads=a.num_key_value_heads or a.num_attention_heads,
            max_position_embeddings=a.max_position_embeddings,
            hidden_act=a.hidden_act or "silu",
            tie_word_embeddings=a.tie_word_embeddings,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
        return LlamaForCausalLM(config)
    if cfg.family == "opt":
        config = OPTConfig(
            vocab_size=vocab_size,
            hidden_size=a.hidden_size,
            ffn_dim=a.intermediate_size,
            num_hidden_layers=a.num_hidden_layers,
            num_attention_heads=a.num_attention_heads,
            max_position_embeddings=a.max_position_embeddings,
            word_embed_proj_dim=a.hidden_size,
            activation_function=a.hidden_act or "relu",
            do_layer_norm_before=True,
            dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=a.tie_word_embeddings,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
        return OPTForCausalLM(config)
    raise ValueError(f"model.family: cannot build a tiny {cfg.family!r} model (llama, opt)")
