"""The Hugging Face part of the conformance zoo: transformers models built from tiny configs.

Each builder returns ``(model, example_inputs, options)`` like those of
``autoprune.testing.architectures`` (which gathers them into ``ARCHITECTURES``). The models
have random weights (no download); ``transformers`` is imported only when a builder runs.
Configs are tiny (widths 16-64, one or two layers, a small vocabulary or image) so that each
conformance check takes a few hundred milliseconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Built = tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]


def _image(c: int = 1, size: int = 16) -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, c, size, size),)


def _tokens(vocab: int, n: int = 8) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, vocab, (2, n)),)


def _seq2seq(vocab: int) -> tuple[torch.Tensor, ...]:
    """input_ids, attention_mask, decoder_input_ids (a shorter target)."""
    ids = torch.randint(0, vocab, (2, 8))
    return ids, torch.ones_like(ids), torch.randint(0, vocab, (2, 6))


def _hf() -> Any:
    warnings.filterwarnings("ignore", module="transformers")
    import transformers  # noqa: PLC0415 - a test dependency, only for these builders

    transformers.utils.logging.set_verbosity_error()
    return transformers


# -- encoders ---------------------------------------------------------------------------------

def _bert() -> Built:
    t = _hf()
    cfg = t.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=16, num_labels=3)
    return t.BertForSequenceClassification(cfg), _tokens(64), {"output": "logits"}


def _bert_base_model() -> Built:  # the hidden width is the output: only heads and MLPs prune
    t = _hf()
    cfg = t.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=16)
    return t.BertModel(cfg, add_pooling_layer=False), _tokens(64), {}


def _distilbert() -> Built:
    t = _hf()
    cfg = t.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                             max_position_embeddings=16)
    return t.DistilBertForSequenceClassification(cfg), _tokens(64), {}


# -- decoders ---------------------------------------------------------------------------------

def _gpt2() -> Built:  # Conv1D layers, fused qkv, tied embeddings
    t = _hf()
    cfg = t.GPT2Config(vocab_size=48, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                       bos_token_id=0, eos_token_id=0)
    return t.GPT2LMHeadModel(cfg), _tokens(48), {}


def _llama() -> Built:  # grouped-query attention, rotary embeddings, gated MLP
    t = _hf()
    cfg = t.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                        bos_token_id=0, eos_token_id=0)
    return t.LlamaForCausalLM(cfg), _tokens(48), {}


# -- encoder-decoders -------------------------------------------------------------------------

def _t5() -> Built:  # relative position bias shared across a stack, cross-attention
    t = _hf()
    cfg = t.T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                     d_kv=8, vocab_size=64, decoder_start_token_id=0)
    return t.T5ForConditionalGeneration(cfg), _seq2seq(64), {"output": "logits"}


# -- vision -----------------------------------------------------------------------------------

def _vit() -> Built:
    t = _hf()
    cfg = t.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32,
                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                      num_labels=10)
    return t.ViTForImageClassification(cfg), _image(), {}


# -- audio ------------------------------------------------------------------------------------

def _wav2vec2() -> Built:  # a conv feature encoder; the weight-normed positional conv stays dense
    t = _hf()
    cfg = t.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                           conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                           num_conv_pos_embedding_groups=4, vocab_size=10)
    return t.Wav2Vec2Model(cfg), (torch.randn(2, 400),), {"output": "last_hidden_state"}


HF_ARCHITECTURES: dict[str, Callable[[], Built]] = {
    "hf-bert": _bert, "hf-bert-base-model": _bert_base_model, "hf-distilbert": _distilbert,
    "hf-vit": _vit, "hf-gpt2": _gpt2, "hf-llama-gqa": _llama,
    "hf-t5": _t5, "hf-wav2vec2": _wav2vec2,
}
