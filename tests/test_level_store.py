"""Weight-sparse trials at the size of the model: no copy of the dense network, each unit's
levels pruned once into a level store on disk and read back by later trials, by another space
on the same folder (a resumed run, pick, a Ray worker) and never misread for another model."""

from __future__ import annotations

import numpy as np
import torch

from autoprune.search_spaces import LevelStore, make_space, mask_of
from autoprune.search_spaces import sparse as sparse_module
from autoprune.testing.memory import peak_allocated
from autoprune.zoo.models import build_model


def _vgg() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("vgg11", num_classes=10).eval(), torch.randn(1, 3, 32, 32)


def _bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_a_weight_sparse_trial_never_copies_the_dense_network() -> None:
    model, x = _vgg()
    space = make_space("unstructured", model, x, criterion="magnitude")
    dense = _bytes(model)
    config = {u.name: u.choices[0] for u in space.units}  # every unit at its sparsest level
    space.apply(model, config)  # (the first trial fills the level store)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, peak = peak_allocated(lambda: space.apply(model, config))
    # the pruned network (weights, masks one byte a weight) and little more: a deep copy
    # of the model and per-layer sorts allocated 2.5x the dense bytes here (now 1.5x)
    assert peak < 0.5 * dense + _bytes(pruned), (peak, dense)
    theirs = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    mine = {t.untyped_storage().data_ptr() for t in pruned.state_dict().values()}
    assert not theirs & mine  # fine-tuning the trial's network leaves the dense one alone
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_levels_are_pruned_once_and_read_back(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    model, x = _vgg()
    calls = []
    real = sparse_module.magnitude_masks
    monkeypatch.setattr(sparse_module, "magnitude_masks",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    space = make_space("unstructured", model, x, criterion="magnitude")
    space.keep_in(tmp_path / "levels")
    rng = np.random.default_rng(0)
    config = space.decode(rng.random(space.dim))
    first = space.apply(model, config)
    units = [u for u in space.units if config[u.name] < u.full]
    pruned = len(units)
    # one ranking of each pruned layer gives all of its levels, each written once
    assert len(calls) == pruned
    assert space.level_store.writes == sum(len(u.choices) - 1 for u in units)
    reads = space.level_store.reads
    again = space.apply(model, config)
    assert len(calls) == pruned and space.level_store.reads == reads + pruned
    other_levels = {u.name: u.choices[0] for u in units}  # another level: read, not pruned
    space.apply(model, other_levels)
    assert len(calls) == pruned
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # a second space on the same folder (a resumed run, pick, a Ray worker) reads, never prunes
    other = make_space("unstructured", model, x, criterion="magnitude")
    other.keep_in(tmp_path / "levels")
    third = other.apply(model, config)
    assert len(calls) == pruned and other.level_store.writes == 0
    for u in space.units:
        assert torch.equal(mask_of(first.get_submodule(u.name)) if config[u.name] < u.full
                           else torch.ones(1), mask_of(third.get_submodule(u.name))
                           if config[u.name] < u.full else torch.ones(1))
    # another model's weights are other entries: the folder is never misread
    with torch.no_grad():
        changed, _ = _vgg()
        for p in changed.parameters():
            p.add_(torch.randn_like(p))
    fresh = make_space("unstructured", changed, x, criterion="magnitude")
    fresh.keep_in(tmp_path / "levels")
    fresh.apply(changed, config)
    assert fresh.level_store.writes == sum(len(u.choices) - 1 for u in units)


def test_sparsegpt_levels_keep_its_updated_weights(tmp_path) -> None:  # noqa: ANN001
    model, x = _vgg()
    space = make_space("unstructured", model, x, criterion="sparsegpt", calibration=[(x, None)])
    space.keep_in(tmp_path)
    config = {u.name: u.choices[len(u.choices) // 2] for u in space.units}
    first = space.apply(model, config)
    again = space.apply(model, config)
    assert space.level_store.reads >= space.dim
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    unit = space.units[0].name
    dense = model.get_submodule(unit).weight
    kept = mask_of(first.get_submodule(unit))
    updated = first.get_submodule(unit).weight
    assert not torch.equal(updated[kept], dense[kept])  # SparseGPT moved the kept weights


def test_a_level_store_pickles_to_its_folder(tmp_path) -> None:  # noqa: ANN001
    import pickle  # noqa: PLC0415

    store = LevelStore(tmp_path)
    store.save("k", {"bits": torch.tensor([1, 2], dtype=torch.uint8)})
    worker = pickle.loads(pickle.dumps(store))
    assert worker.folder == store.folder and torch.equal(worker.load("k")["bits"],
                                                         torch.tensor([1, 2], dtype=torch.uint8))
    assert worker.load("missing") is None


def test_prepare_prunes_every_level_once_per_search(tmp_path) -> None:  # noqa: ANN001
    model, x = _vgg()
    space = make_space("nm", model, x, criterion="magnitude")
    space.keep_in(tmp_path)
    space.prepare(model)
    assert space.level_store.writes == space.levels_total() > 0
    rng = np.random.default_rng(0)
    for _ in range(3):
        space.apply(model, space.decode(rng.random(space.dim)))
    assert space.level_store.writes == space.levels_total()  # trials only read
    space.prepare(model)  # a resumed search: everything is there already
    assert space.level_store.writes == space.levels_total()


def test_sparsegpt_drops_its_hessians_once_the_store_is_built(tmp_path) -> None:  # noqa: ANN001
    """Trials read levels named by the statistics' fingerprints: once every level is in the
    store the Hessians are let go, the trials are the networks a space holding them gives,
    and a level that went missing is pruned after measuring them again."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 4 * 4, 10)).eval()
    x = torch.randn(4, 3, 8, 8)
    kw = dict(criterion="sparsegpt", calibration=[(x, None)], levels=(0.0, 0.5, 0.8))
    space = make_space("unstructured", model, x, **kw)
    space.keep_in(tmp_path / "a")
    space.prepare(model)
    assert all(s.hessian is None for s in space._stats[2].values())
    holding = make_space("unstructured", model, x, **kw)  # prunes as trials ask: keeps them
    holding.keep_in(tmp_path / "b")
    rng = np.random.default_rng(1)
    configs = [space.decode(rng.random(space.dim)) for _ in range(3)]
    for config in configs:
        a, b = space.apply(model, config), holding.apply(model, config)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                    b.state_dict().values()))
    assert all(s.hessian is not None for s in holding._stats[2].values())
    writes = space.level_store.writes
    for f in (tmp_path / "a").iterdir():  # every level gone: pruned again, from Hessians
        f.unlink()
    again = space.apply(model, configs[0])
    assert space.level_store.writes > writes
    b = holding.apply(model, configs[0])
    assert all(torch.equal(p, q) for p, q in zip(again.state_dict().values(),
                                                b.state_dict().values()))
