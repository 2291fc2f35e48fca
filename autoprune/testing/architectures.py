"""A zoo of foreign architectures: what users bring, built small, for conformance checks.

Each entry is ``name -> builder``; a builder returns ``(model, example_inputs, options)`` where
``options`` are extra ``ChannelSpace.from_model`` arguments. The Hugging Face models
(encoders, decoders, encoder-decoders, vision and audio models) live in
``autoprune.testing.hf_architectures``, built from tiny configs with random weights (no
download; ``transformers`` is imported only by their builders). The project's tests (``tests/test_architectures.py``) and
``benchmarks/architectures.py`` run over all of them; a third-party space can too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.testing.hf_architectures import HF_ARCHITECTURES
from autoprune.zoo.models import build_model

Built = tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]


def _image(c: int = 1, size: int = 16) -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, c, size, size),)


def _zoo(name: str) -> Callable[[], Built]:
    def build() -> Built:
        return build_model(name, in_channels=1, input_size=16, width_mult=0.25), _image(), {"round_to": 2}
    return build


class SdpaBlock(nn.Module):
    """Plain PyTorch attention: fused qkv, F.scaled_dot_product_attention, an MLP."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, -1))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SdpaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.blocks = nn.Sequential(SdpaBlock(), SdpaBlock())
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)).mean(1))


class MhaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc1, self.fc2, self.head = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h.mean(1))


class EncoderNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 48, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def _seq() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 7, 6),)


def _cbr(i: int, o: int, k: int = 3, **kw: Any) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False, **kw), nn.BatchNorm2d(o),
                         nn.ReLU())


class DenseNetLike(nn.Module):
    """Dense connectivity: every layer sees the concatenation of all earlier features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 16)
        self.layers = nn.ModuleList([_cbr(16 + 8 * i, 8) for i in range(3)])
        self.transition = _cbr(40, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return self.head(self.transition(torch.cat(feats, 1)).mean((2, 3)))


class UNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = _cbr(1, 16), _cbr(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = _cbr(32, 16)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        return self.out(self.dec(torch.cat([e1, self.up(e2)], 1)))


class InceptionLike(nn.Module):
    """Branches concatenated, then a grouped conv over the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 16)
        self.b1, self.b3 = _cbr(16, 16, 1), _cbr(16, 16, 3)
        self.grouped = _cbr(32, 32, 3, groups=4)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.grouped(torch.cat([self.b1(x), self.b3(x)], 1))
        return self.head(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = _cbr(1, 32), _cbr(32, 32)
        self.se1, self.se2 = nn.Linear(32, 8), nn.Linear(8, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        gate = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3))))))
        return self.head((x * gate[:, :, None, None]).mean((2, 3)))


class GatedChunk(nn.Module):
    """A conv whose output is chunked into a value and a gate (GLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 16)
        self.pair = nn.Conv2d(16, 64, 1)
        self.mix = _cbr(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = torch.chunk(self.pair(self.stem(x)), 2, dim=1)
        return self.head(self.mix(value * torch.sigmoid(gate)).mean((2, 3)))


class SplitBranches(nn.Module):
    """torch.split into unequal halves that are processed apart and concatenated back."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 24)
        self.left, self.right = _cbr(8, 8), _cbr(16, 16)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.stem(x), [8, 16], dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 16)
        self.dw = _cbr(16, 16, 3, groups=16)
        self.pw = _cbr(16, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw(self.stem(x))).mean((2, 3)))


class CalledTwice(nn.Module):
    """One conv applied twice in a row (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.shared(torch.relu(self.shared(x))))
        return self.head(x.mean((2, 3)))


class FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = _cbr(1, 16), _cbr(16, 16)
        self.pool = nn.MaxPool2d(4)
        self.fc, self.head = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv2(self.conv1(x))).flatten(1)
        return self.head(torch.relu(self.fc(x)))


class LstmNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.rnn = nn.LSTM(16, 24, num_layers=2, batch_first=True)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(torch.relu(self.embed(x)))
        return self.head(y[:, -1])


class GruNet(nn.Module):
    """A bidirectional GRU, time first (Torch-Pruning cannot prune into it: kept dense)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.rnn = nn.GRU(16, 12, bidirectional=True)
        self.fc, self.head = nn.Linear(24, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(torch.relu(self.embed(x)).transpose(0, 1))
        return self.head(torch.relu(self.fc(y[-1])))


class FreeParameters(nn.Module):
    """A class token, a learned position table and a per-channel scale held by the model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.pos = nn.Parameter(torch.randn(1, 8, 32))
        self.scale = nn.Parameter(torch.ones(32))
        self.fc1, self.fc2, self.head = nn.Linear(32, 48), nn.Linear(48, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], 1) + self.pos
        h = h + self.fc2(torch.relu(self.fc1(h))) * self.scale
        return self.head(h[:, 0])


class TwoInputs(nn.Module):
    """An image and a vector, fused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = _cbr(1, 16), _cbr(16, 32)
        self.vec = nn.Linear(5, 32)
        self.fc, self.head = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        f = torch.cat([self.conv2(self.conv1(image)).mean((2, 3)), torch.relu(self.vec(vector))], 1)
        return self.head(torch.relu(self.fc(f)))


class DictOutputs(nn.Module):
    """Returns a dict: the logits and an auxiliary embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = _cbr(1, 16), _cbr(16, 32)
        self.head, self.aux = nn.Linear(32, 10), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.conv2(self.conv1(x)).mean((2, 3))
        return {"logits": self.head(f), "embedding": self.aux(f)}


class SwiGluExpert(nn.Module):
    """One expert: a gated MLP."""

    def __init__(self, dim: int = 32, hidden: int = 48) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoeLayer(nn.Module):
    """Top-2 of 4 experts (an ``nn.ModuleList``) behind a linear router, each expert run only
    on the tokens routed to it, its output weighted by the routing weight (Mixtral's layer as
    ``transformers`` 4 wrote it)."""

    def __init__(self, dim: int = 32, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(SwiGluExpert(dim) for _ in range(experts))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        w, idx = torch.topk(torch.softmax(self.router(x), -1), self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(idx == e)
            if len(tok):
                out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
        return out.reshape(shape)


class MoeDecoderBlock(nn.Module):
    """Causal attention (fused qkv, ``F.scaled_dot_product_attention``), then the MoE layer."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.moe = MoeLayer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, -1))
        return x + self.moe(self.norm2(x))


class MoeDecoder(nn.Module):
    """A plain-PyTorch mixture-of-experts language model: two decoder blocks."""

    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(MoeDecoderBlock(dim), MoeDecoderBlock(dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(ids))))


def _plain(cls: type[nn.Module], inputs: Callable[[], tuple[torch.Tensor, ...]],
           **options: Any) -> Callable[[], Built]:
    def build() -> Built:
        return cls(), inputs(), {"round_to": 4, **options}
    return build


ARCHITECTURES: dict[str, Callable[[], Built]] = {
    **{f"zoo-{n}": _zoo(n) for n in ("resnet20", "resnet56", "vgg11", "vgg16", "mobilenetv1",
                                     "mobilenetv2")},
    **HF_ARCHITECTURES,
    "sdpa-attention": _plain(SdpaNet, _seq), "multihead-attention": _plain(MhaNet, _seq),
    "transformer-encoder": _plain(EncoderNet, _seq),
    "densenet-concat": _plain(DenseNetLike, _image), "unet-transposed": _plain(UNetLike, _image),
    "inception-grouped": _plain(InceptionLike, _image),
    "squeeze-excite": _plain(SqueezeExcite, _image), "gated-chunk": _plain(GatedChunk, _image),
    "split-branches": _plain(SplitBranches, _image),
    "depthwise-separable": _plain(DepthwiseSeparable, _image),
    "called-twice": _plain(CalledTwice, _image), "flatten-head": _plain(FlattenHead, _image),
    "lstm": _plain(LstmNet, _seq), "gru-bidirectional": _plain(GruNet, _seq),
    "free-parameters": _plain(FreeParameters, _seq),
    "two-inputs": _plain(TwoInputs, lambda: (torch.randn(2, 1, 16, 16), torch.randn(2, 5))),
    "dict-outputs": _plain(DictOutputs, _image, output="logits"),
    "moe-modulelist": _plain(MoeDecoder, lambda: (torch.randint(0, 64, (2, 16)),)),
}
