import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cellseg.common.errors import DataError
from cellseg.model.checkpoint import fingerprint, load_checkpoint, rng_state, save_checkpoint, set_rng_state


class Touch:
    """Unpickling this would create `marker`: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class Settings:
    def __init__(self):
        self.lr = 0.1


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def trained_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "step": 7,
        "epoch": 1,
        "history": [{"epoch": 0, "loss": 1.5, "AP": None}],
        "fingerprint": "abc",
    }


def test_round_trip_with_rng_states(tmp_path):
    random.seed(1)
    np.random.seed(1)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    np.random.randn()
    state = {**trained_state(), "rng": rng_state()}
    expected = draws()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    assert draws() == expected
    for key in ("step", "epoch", "history", "fingerprint", "scheduler", "scaler"):
        assert loaded[key] == state[key]
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_save_refuses_non_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"state\['rng'\]\['numpy'\] is a ndarray"):
        save_checkpoint(tmp_path / "c.pt", {"rng": {"numpy": np.zeros(3)}})
    assert not list(tmp_path.iterdir())


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "x": Touch(marker)}, path)
    with pytest.raises(DataError, match=f"{path}: refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_object_is_refused(tmp_path, legacy):
    path = tmp_path / "checkpoint.pt"
    if legacy:
        path.write_bytes(pickle.dumps({"config": Settings()}, protocol=2))
    else:
        torch.save({"config": Settings()}, path)
    with pytest.raises(DataError, match=f"{path}: refused to load"):
        load_checkpoint(path)


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=str(path)):
        load_checkpoint(path)


def test_fingerprint_follows_config_files_and_arrays(tmp_path):
    data = tmp_path / "a.npz"
    data.write_bytes(b"one")
    base = fingerprint({"lr": 1e-3, "seed": 0}, [data], [np.zeros(3)])
    assert fingerprint({"seed": 0, "lr": 1e-3}, [data], [np.zeros(3)]) == base
    assert fingerprint({"lr": 2e-3, "seed": 0}, [data], [np.zeros(3)]) != base
    assert fingerprint({"lr": 1e-3, "seed": 0}, [data], [np.ones(3)]) != base
    data.write_bytes(b"two")
    assert fingerprint({"lr": 1e-3, "seed": 0}, [data], [np.zeros(3)]) != base


def test_cuda_rng_states_restore_only_on_visible_gpus(monkeypatch):
    """A checkpoint of a 2-GPU node resumed on 1 GPU (or none): the states of devices that do
    not exist are dropped, where torch.cuda.set_rng_state_all raised for the missing device."""
    state = rng_state()
    state["cuda"] = [torch.full((4,), 1, dtype=torch.uint8), torch.full((4,), 2, dtype=torch.uint8)]
    restored = []

    def set_one(new_state, device):
        if device >= 1:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored.append((device, int(new_state[0])))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    set_rng_state(state)
    assert restored == [(0, 1)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_rng_state(state)  # a GPU run resumed on the CPU
    assert restored == [(0, 1)]
