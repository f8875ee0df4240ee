"""Retraining's resident data (coreset.data.resident): the splits held on the trial's device,
batches gathered, augmented and normalised there, the same batches as the loader's.

On the CPU the ``meta`` device stands in for a GPU: an op that mixes a CPU tensor into a
batch held elsewhere raises there as it would on CUDA, so the device path is exercised
without one. The CUDA test compares the values."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from studies import synthetic_study

from coreset.config import DataConfig
from coreset.data import Datasets
from coreset.data.resident import budget_bytes, held_bytes, same_device
from coreset.data.synthetic import synthetic_splits
from coreset.models import build_model
from coreset.stages.retrain import Trial, retrain, trial_batches
from coreset.training import prepare_model, to_device

META = torch.device("meta")
CPU = torch.device("cpu")


def cifar_shaped(n_train: int = 96) -> Datasets:
    """CIFAR-10-shaped decoded splits (a test split a quarter the size) under the name
    cifar10: its statistics and crop+flip."""
    return Datasets(DataConfig(name="cifar10", root="unused"), *synthetic_splits(n_train, 10, 32, channels=3), 32)


def _epochs(batches, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    out = []
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        out += list(batches)
    return out


def test_a_packs_trials_share_one_resident_copy_within_the_budget() -> None:
    data = cifar_shaped()
    split_bytes = held_bytes(data.train, META) + held_bytes(data.test, META)
    assert held_bytes(data.train, CPU) == 0 and split_bytes == (96 + 24) * 3 * 32 * 32
    assert data.resident(META, split_bytes - 1) is None  # the size guard: the loader path
    assert data.resident(CPU, 0) is None  # resident_max_gb 0: off
    held = data.resident(META, split_bytes)
    assert held is not None and held is data.resident(META, split_bytes)  # made once per process
    assert held.train.images.device == META and held.test.labels.device == META
    assert data.train.images.device == CPU  # the loader's copy stays
    on_cpu = data.resident(CPU, 1)
    assert on_cpu is not None and on_cpu.train is data.train  # decoded in memory: its own copy


def test_resident_batches_are_made_on_the_device_from_the_cpus_draws() -> None:
    """Every op of a batch (slicing, crop, flip, normalisation) runs where the images are; the
    ids come back on the CPU, in the loader's shuffled order."""
    data = cifar_shaped()
    held = data.resident(META, 1 << 30)
    ids = np.arange(3, 90, 2)
    got = _epochs(held.subset_batches(ids, 16, train=True, shuffle=True, seed=4))
    want = _epochs(data.subset_batches(ids, 16, train=True, shuffle=True, seed=4))
    assert [(x.device, x.shape, y.device) for x, y, _ in got] == [(META, x.shape, META) for x, _, _ in want]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(got, want, strict=True))


def test_the_resident_path_trains_the_loaders_batches() -> None:
    """On the CPU the resident batches are the loader's, bit for bit: shuffle and augmentation
    drawn from the trial's seed, each epoch a permutation of the subset."""
    cfg = synthetic_study("resident", "retrain.policy=steps", "retrain.steps=8", "retrain.evaluations=2",
                          "retrain.batch_size=16")
    data, ids = cifar_shaped(), np.arange(5, 85)
    loader = dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, resident_max_gb=0.0))
    resident_train, _, _ = trial_batches(cfg, data, ids, 3, CPU, None)
    loader_train, _, _ = trial_batches(loader, data, ids, 3, CPU, None)
    got, want = _epochs(resident_train, 3), _epochs(loader_train, 3)
    for (xa, ya, ia), (xb, yb, ib) in zip(got, want, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    per_epoch = len(resident_train)
    for epoch in range(3):
        seen = torch.cat([i for _, _, i in got[epoch * per_epoch: (epoch + 1) * per_epoch]])
        assert sorted(seen.tolist()) == ids.tolist()
    assert not torch.equal(got[0][2], got[per_epoch][2])  # reshuffled each epoch
    trial = Trial("random", 0.5, 0, "cnn5")
    rows = [retrain(c, data, trial, ids, device=CPU) for c in (cfg, loader)]
    assert {k: v for k, v in rows[0].items() if k != "wall_s"} == {k: v for k, v in rows[1].items() if k != "wall_s"}


def test_the_budget_is_a_share_of_the_gpus_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60e9, 100e9))
    cuda = torch.device("cuda", 0)
    assert budget_bytes(cuda, 16, 0.25) == int(0.5 * 0.25 * 100e9)  # a quarter of the GPU, half of it for data
    assert budget_bytes(cuda, 16, 1.0) == int(16e9)  # resident_max_gb binds
    assert budget_bytes(cuda, 100, 1.0) == int(0.5 * 60e9)  # what is free binds
    assert budget_bytes(cuda, 0, 1.0) == 0 and budget_bytes(CPU, 2, 0.25) == int(2e9)
    assert same_device(CPU, torch.device("cpu")) and not same_device(CPU, META)


@pytest.mark.cuda
def test_resident_batches_and_training_on_cuda_match_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resident CUDA batches equal the CPU loader's (the same draws; float normalisation to
    rounding), the model and its inputs are channels-last there, and a short trial reaches the
    CPU's accuracy to tolerance (cuDNN's kernels differ in the last bits; bf16 off)."""
    cuda = torch.device("cuda")
    data, ids = cifar_shaped(256), np.arange(0, 256)
    held = data.resident(cuda, 1 << 30)
    assert held is not None and held.train.images.is_cuda
    got = _epochs(held.subset_batches(ids, 64, train=True, shuffle=True, seed=1))
    want = _epochs(data.subset_batches(ids, 64, train=True, shuffle=True, seed=1))
    for (xa, ya, ia), (xb, yb, ib) in zip(got, want, strict=True):
        assert xa.is_cuda and torch.equal(ya.cpu(), yb) and torch.equal(ia, ib)
        torch.testing.assert_close(xa.cpu(), xb, rtol=0, atol=1e-5)
    model = prepare_model(build_model("cnn5", data.spec), cuda)
    assert model.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert to_device(got[0][0], cuda).is_contiguous(memory_format=torch.channels_last)
    cfg = synthetic_study("resident", "retrain.policy=steps", "retrain.steps=30", "retrain.evaluations=3",
                          "retrain.batch_size=32", "train.amp=false")
    trial = Trial("random", 1.0, 0, "cnn5")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    seen: dict[str, list[dict]] = {"cpu": [], "cuda": []}
    rows = {d.type: retrain(cfg, data, trial, ids, report=seen[d.type].append, device=d) for d in (CPU, cuda)}
    losses = {k: [m["train_loss"] for m in v] for k, v in seen.items()}
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=2e-2)
    assert abs(rows["cuda"]["test_acc"] - rows["cpu"]["test_acc"]) <= 0.1, rows
    amp = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=True))
    assert 0 <= retrain(amp, data, trial, ids, device=cuda)["test_acc"] <= 1  # bf16 autocast runs
