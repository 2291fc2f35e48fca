"""State-space and audio families (issue 31, item 4): Mamba (transformers' MambaForCausalLM and
a plain-PyTorch selective-scan block) and a Whisper-style encoder-decoder each build a channel
space, are costed exactly (MACs equal ``reference_macs``, parameters the real count) at the
dense, the thinnest and a random configuration, and prune into networks that run with the
output's shape; what stays dense is named in the notes."""

from __future__ import annotations

import functools

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.search_spaces.ssm import is_mamba_mixer
from autoprune.testing.hf_architectures import HF_ARCHITECTURES
from autoprune.search_spaces.tracing import call_model, output_tensor


def _hf():
    warnings.filterwarnings("ignore", module="transformers")
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    return transformers


def _mamba():
    _hf()
    model, inputs, options = HF_ARCHITECTURES["hf-mamba"]()
    return model, inputs, options["output"]


def _whisper():
    _hf()
    model, inputs, options = HF_ARCHITECTURES["hf-whisper"]()
    return model, inputs, options["output"]


class ScanMixer(nn.Module):
    """A plain-PyTorch selective-scan block (Mamba's parts, names and layout); every size it
    uses is read off its tensors."""

    def __init__(self, d: int = 32, inner: int = 64, state: int = 8, rank: int = 4,
                 kernel: int = 4) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d, 2 * inner)
        self.conv1d = nn.Conv1d(inner, inner, kernel, groups=inner, padding=kernel - 1)
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1).float()).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        steps = h.shape[1]
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :steps]).transpose(1, 2)  # [b, T, inner]
        state = self.A_log.shape[1]
        dt, b, c = self.x_proj(x).split([self.dt_proj.in_features, state, state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        da = torch.exp(dt.unsqueeze(-1) * -torch.exp(self.A_log))  # [b, T, inner, state]
        dbx = dt.unsqueeze(-1) * b.unsqueeze(2) * x.unsqueeze(-1)
        s = torch.zeros_like(dbx[:, 0])
        ys = []
        for t in range(steps):
            s = da[:, t] * s + dbx[:, t]
            ys.append((s @ c[:, t].unsqueeze(-1)).squeeze(-1))
        y = torch.stack(ys, 1) + x * self.D
        return self.out_proj(y * F.silu(z))


class ScanLM(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.mixers = nn.ModuleList(ScanMixer(d) for _ in range(layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))
        return self.head(h)


def _scan_lm():
    return ScanLM(), (torch.randint(0, 64, (2, 8)),), None


BUILDERS = {"hf-mamba": _mamba, "scan-block": _scan_lm, "hf-whisper": _whisper}


def _out(model: nn.Module, inputs: tuple, output: object) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call_model(model.eval(), inputs), output)


@functools.lru_cache(maxsize=None)
def _built(name: str):
    torch.manual_seed(0)
    model, inputs, output = BUILDERS[name]()
    model.eval()
    space = ChannelSpace.from_model(model, inputs, output=output)
    return name, model, inputs, output, space


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def built(request: pytest.FixtureRequest):
    return _built(request.param)


def test_exact_costs_and_working_pruned_networks(built) -> None:
    name, model, inputs, output, space = built
    shape = _out(model, inputs, output).shape
    dense = reference_macs(model, inputs)
    rng = np.random.default_rng(0)
    configs = [space.dense_config(), space.min_config(), space.decode(rng.random(space.dim))]
    for config in configs:
        pruned = space.apply(model, config)
        assert _out(pruned, inputs, output).shape == shape, (name, config)
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, inputs), (name, config)
        assert sum(r.params for r in table) == reference_params(pruned), (name, config)
    thinnest = sum(r.macs for r in space.layer_table(space.min_config()))
    assert thinnest <= 0.3 * dense, (name, thinnest / dense)


@pytest.mark.parametrize("name", ["hf-mamba", "scan-block"])
def test_mamba_inner_width_is_one_unit(name: str) -> None:
    name, model, inputs, output, space = _built(name)
    mixers = [n for n, m in model.named_modules() if is_mamba_mixer(m)]
    assert mixers
    for mixer in mixers:
        units = [u for u in space.units if f"{mixer}.conv1d" in u.members]
        assert len(units) == 1, (mixer, [u.members for u in space.units])
        assert {f"{mixer}.{p}" for p in ("in_proj", "conv1d", "dt_proj")} <= set(units[0].members)
        assert units[0].full == model.get_submodule(mixer).D.numel()
        # x_proj's outputs (time-step rank, B, C) are no inner width: named, kept dense
        assert any(note.startswith(f"{mixer}.x_proj") for note in space.notes), space.notes
    thinnest = space.min_config()
    pruned = space.apply(model, thinnest)
    for mixer in mixers:
        unit = next(u for u in space.units if f"{mixer}.conv1d" in u.members)
        m, kept = pruned.get_submodule(mixer), thinnest[unit.name]
        assert m.A_log.shape[0] == m.D.shape[0] == m.conv1d.out_channels == kept
        assert m.in_proj.out_features == 2 * kept and m.out_proj.in_features == kept
        assert m.dt_proj.out_features == m.x_proj.in_features == kept


def test_whisper_encoder_width_prunes_and_its_output_is_named() -> None:
    name, model, inputs, output, space = _built("hf-whisper")
    kinds = {u.kind for u in space.units}
    assert {"heads", "neurons", "channels"} <= kinds  # the conv front end's channels too
    # the encoder's width is the logits' inside (encoder_last_hidden_state, which the decoder
    # reads): a unit of its own (the decoder's is another: no tied embedding joins them)
    residual = {u.name for u in space.units if u.kind == "residual"}
    assert residual == {"model.encoder.conv2", "model.decoder.layers.0.self_attn.out_proj"}
    assert any(n.startswith("encoder_last_hidden_state may change width")
               for n in space.notes), space.notes


def test_pruned_weights_save_reload_and_a_short_allocation_runs(built) -> None:
    import io

    import autoprune

    name, model, inputs, output, space = built
    config = space.min_config()
    pruned = space.apply(model, config)
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    again = space.apply(model, config)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(_out(again, inputs, output), _out(pruned, inputs, output))

    def score(net: nn.Module) -> dict[str, float]:
        return {"loss": float(_out(net, inputs, output).float().pow(2).mean())}

    low, high = (sum(r.macs for r in space.layer_table(c))
                 for c in (space.min_config(), space.dense_config()))
    limit = (low + high) // 2
    alloc = autoprune.allocate(model, example_inputs=inputs, target=f"macs={limit}",
                               evaluate=score, trials=3, space=space)
    assert not alloc.chosen.failed and alloc.costs["macs"] <= limit, name
