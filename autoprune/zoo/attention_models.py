"""Our two transformers: a small ViT for digits and a character-level GPT for the standard
library's source (``zoo.text``). Plain PyTorch, laid out as Hugging Face lays out its
attention (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``num_heads``, ``head_dim``), so the
channel space prunes their heads, MLP widths and residual width like any HF model's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "CharGPT", "ViT"]


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, *, causal: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.num_heads, self.head_dim, self.causal = heads, dim // heads, causal
        self.scaling = self.head_dim ** -0.5  # kept when pruning shortens the heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scaling)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a GELU MLP, each on a residual."""

    def __init__(self, dim: int, heads: int, hidden: int, *, causal: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal=causal)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = nn.GELU()  # a module: the latency table times it with fc1, as one block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


class ViT(nn.Module):
    """A Vision Transformer: patches, a class token, learned positions, pre-norm blocks."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 32,
                 patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch {patch}")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio * dim, causal=False)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        side = int(x.shape[-1])  # a Python int also under tracing (ONNX export)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self._positions(side)
        return self.head(self.norm(self.blocks(x))[:, 0])

    def _positions(self, side: int) -> torch.Tensor:
        """The position table, resampled (bicubic) when the input is not the planned size."""
        planned = math.isqrt(int(self.pos_embed.shape[1]) - 1)
        if side == planned:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, planned, planned, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], 1)


class CharGPT(nn.Module):
    """A GPT-style decoder over characters: token and position embeddings, causal blocks,
    a final norm and a language-model head (not tied: the head prunes with the width)."""

    def __init__(self, *, vocab_size: int, block: int = 64, dim: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, block, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio * dim, causal=True)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size)
        _init(self)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_embed(ids) + self.pos_embed[:, : ids.shape[1]]
        return self.lm_head(self.norm(self.blocks(x)))
