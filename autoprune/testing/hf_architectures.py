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


def _albert() -> Built:  # one layer's weights shared by every layer, a factorised embedding
    t = _hf()
    cfg = t.AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=48, max_position_embeddings=16,
                         num_labels=3)
    return t.AlbertForSequenceClassification(cfg), _tokens(64), {"output": "logits"}


def _deberta_v2() -> Built:  # disentangled attention over relative positions
    t = _hf()
    cfg = t.DebertaV2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=48, max_position_embeddings=16,
                            relative_attention=True, position_buckets=8,
                            pos_att_type=["p2c", "c2p"], num_labels=3)
    return t.DebertaV2ForSequenceClassification(cfg), _tokens(64), {"output": "logits"}


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


def _causal(config: str, model: str, vocab: int = 48, **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        t = _hf()
        cfg = getattr(t, config)(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16, **kw)
        return getattr(t, model)(cfg), _tokens(vocab), {"output": "logits"}
    return build


_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
_mistral = _causal("MistralConfig", "MistralForCausalLM", intermediate_size=48,
                   num_key_value_heads=2, head_dim=8, sliding_window=4, **_IDS)
_qwen2 = _causal("Qwen2Config", "Qwen2ForCausalLM", intermediate_size=48, num_key_value_heads=2,
                 **_IDS)
_phi3 = _causal("Phi3Config", "Phi3ForCausalLM", intermediate_size=48, num_key_value_heads=2,
                **_IDS)
_gemma = _causal("GemmaConfig", "GemmaForCausalLM", intermediate_size=48, num_key_value_heads=1,
                 head_dim=8, **_IDS)
_opt = _causal("OPTConfig", "OPTForCausalLM", ffn_dim=48, word_embed_proj_dim=32, **_IDS)
_gpt_neox = _causal("GPTNeoXConfig", "GPTNeoXForCausalLM", intermediate_size=48, **_IDS)


def _falcon() -> Built:  # multi-query attention, parallel attention and MLP
    t = _hf()
    cfg = t.FalconConfig(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         ffn_hidden_size=48, **_IDS)
    return t.FalconForCausalLM(cfg), _tokens(48), {"output": "logits"}


def _bloom() -> Built:  # ALiBi position biases, fused qkv
    t = _hf()
    cfg = t.BloomConfig(vocab_size=48, hidden_size=32, n_layer=2, n_head=4, **_IDS)
    return t.BloomForCausalLM(cfg), _tokens(48), {"output": "logits"}


# -- encoder-decoders -------------------------------------------------------------------------

def _t5() -> Built:  # relative position bias shared across a stack, cross-attention
    t = _hf()
    cfg = t.T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                     d_kv=8, vocab_size=64, decoder_start_token_id=0)
    return t.T5ForConditionalGeneration(cfg), _seq2seq(64), {"output": "logits"}


def _bart() -> Built:  # learned positions, post-LayerNorm, cross-attention
    t = _hf()
    cfg = t.BartConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                       decoder_ffn_dim=48, max_position_embeddings=16, pad_token_id=1,
                       bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    return t.BartForConditionalGeneration(cfg), _seq2seq(64), {"output": "logits"}


# -- vision -----------------------------------------------------------------------------------

def _vit() -> Built:
    t = _hf()
    cfg = t.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32,
                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                      num_labels=10)
    return t.ViTForImageClassification(cfg), _image(), {}


def _swin() -> Built:  # shifted windows, relative position bias, patch merging
    t = _hf()
    cfg = t.SwinConfig(image_size=16, patch_size=2, num_channels=1, embed_dim=32, depths=[1, 1],
                       num_heads=[2, 4], window_size=4, mlp_ratio=2.0, num_labels=10)
    return t.SwinForImageClassification(cfg), _image(), {"output": "logits"}


def _convnext() -> Built:  # depthwise 7x7 convs, channels-last LayerNorm, layer scale
    t = _hf()
    cfg = t.ConvNextConfig(num_channels=1, patch_size=4, num_stages=2, hidden_sizes=[16, 32],
                           depths=[1, 1], image_size=16, num_labels=10)
    return t.ConvNextForImageClassification(cfg), _image(), {"output": "logits"}


def _regnet() -> Built:  # grouped convs, squeeze-excitation (Y blocks)
    t = _hf()
    cfg = t.RegNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                         groups_width=8, layer_type="y", num_labels=10)
    return t.RegNetForImageClassification(cfg), _image(), {"output": "logits"}


def _deit() -> Built:  # a class and a distillation token
    t = _hf()
    cfg = t.DeiTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       num_labels=10)
    return t.DeiTForImageClassification(cfg), _image(), {"output": "logits"}


def _beit() -> Built:  # relative position bias per layer, layer scale, mean pooling
    t = _hf()
    cfg = t.BeitConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       use_relative_position_bias=True, use_mean_pooling=True, num_labels=10)
    return t.BeitForImageClassification(cfg), _image(), {"output": "logits"}


def _segformer() -> Built:  # overlapping patch embeddings, reduced keys, an all-MLP decoder
    t = _hf()
    cfg = t.SegformerConfig(num_channels=1, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                            hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                            num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                            decoder_hidden_size=32, num_labels=3)
    return t.SegformerForSemanticSegmentation(cfg), _image(size=32), {"output": "logits"}


def _dinov2() -> Built:  # layer scale, interpolated position embeddings
    t = _hf()
    cfg = t.Dinov2Config(image_size=16, patch_size=4, num_channels=1, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, num_labels=10)
    return t.Dinov2ForImageClassification(cfg), _image(), {"output": "logits"}


def _clip_vision() -> Built:  # pre-LayerNorm, quick-GELU, a projection to the joint space
    t = _hf()
    cfg = t.CLIPVisionConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32,
                             intermediate_size=48, projection_dim=16, num_hidden_layers=2,
                             num_attention_heads=4)
    return t.CLIPVisionModelWithProjection(cfg), _image(), {"output": "image_embeds"}


def _clip_text() -> Built:  # causal mask, pooling at the end-of-text token
    t = _hf()
    cfg = t.CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, projection_dim=16,
                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                           eos_token_id=2)
    return t.CLIPTextModelWithProjection(cfg), _tokens(64), {"output": "text_embeds"}


# -- audio ------------------------------------------------------------------------------------

def _wav2vec2() -> Built:  # a conv feature encoder; the weight-normed positional conv stays dense
    t = _hf()
    cfg = t.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                           conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                           num_conv_pos_embedding_groups=4, vocab_size=10)
    return t.Wav2Vec2Model(cfg), (torch.randn(2, 400),), {"output": "last_hidden_state"}


# -- mixture of experts, state space, audio encoder-decoder -------------------------------------

def _mixtral() -> Built:  # fused 3-D experts (grouped_mm), top-2 of 4, GQA
    t = _hf()
    cfg = t.MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                          num_experts_per_tok=2, vocab_size=64)
    return t.MixtralForCausalLM(cfg), _tokens(64, 16), {"output": "logits"}


def _qwen2_moe() -> Built:  # fused experts beside a shared expert
    t = _hf()
    cfg = t.Qwen2MoeConfig(hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                           shared_expert_intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                           num_experts_per_tok=2, vocab_size=64)
    return t.Qwen2MoeForCausalLM(cfg), _tokens(64, 16), {"output": "logits"}


def _mamba() -> Built:  # causal depthwise conv and selective scan (the slow path on a CPU)
    t = _hf()
    cfg = t.MambaConfig(hidden_size=32, state_size=8, num_hidden_layers=2, vocab_size=64,
                        expand=2, conv_kernel=4, use_cache=False)
    return t.MambaForCausalLM(cfg), _tokens(64), {"output": "logits"}


def _whisper() -> Built:  # conv front end on log-mel features, encoder-decoder
    t = _hf()
    cfg = t.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
                          max_source_positions=16, max_target_positions=16, vocab_size=64,
                          pad_token_id=0, bos_token_id=0, eos_token_id=0,
                          decoder_start_token_id=0, use_cache=False)
    features = torch.randn(2, 8, 32)  # (batch, mel bins, 2 * max_source_positions)
    inputs = (features, torch.ones(2, 32, dtype=torch.long), torch.randint(0, 64, (2, 6)))
    return t.WhisperForConditionalGeneration(cfg), inputs, {"output": "logits"}


HF_ARCHITECTURES: dict[str, Callable[[], Built]] = {
    "hf-bert": _bert, "hf-bert-base-model": _bert_base_model, "hf-distilbert": _distilbert,
    "hf-vit": _vit, "hf-gpt2": _gpt2, "hf-llama-gqa": _llama,
    "hf-t5": _t5, "hf-wav2vec2": _wav2vec2,
    "hf-swin": _swin, "hf-convnext": _convnext, "hf-regnet": _regnet,
    "hf-deit": _deit, "hf-beit": _beit, "hf-segformer": _segformer, "hf-dinov2": _dinov2,
    "hf-clip-vision": _clip_vision, "hf-clip-text": _clip_text, "hf-bart": _bart,
    "hf-albert": _albert, "hf-deberta-v2": _deberta_v2, "hf-mistral": _mistral,
    "hf-qwen2": _qwen2, "hf-phi3": _phi3, "hf-gemma": _gemma, "hf-opt": _opt,
    "hf-gpt-neox": _gpt_neox, "hf-falcon": _falcon, "hf-bloom": _bloom,
    "hf-mixtral-moe": _mixtral, "hf-qwen2-moe": _qwen2_moe, "hf-mamba": _mamba,
    "hf-whisper": _whisper,
}
