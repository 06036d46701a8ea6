"""`thinwire.simulate`: your own nn.Module on your own tensors or Dataset, one call."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import thinwire
from thinwire.errors import ConfigError
from thinwire.tasks import MODELS


def blobs(n, seed):
    """4 well-separated classes in 6 dimensions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    return torch.randn(n, 6, generator=g) + 5 * torch.eye(4, 6)[y], y


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(x)


class Pairs(Dataset):
    """A map-style Dataset that is not a TensorDataset (items one by one)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


COMMON = dict(nodes=2, epochs=2, batch_size=16, checkpoint_every=0)


@pytest.mark.parametrize("wrap", [lambda xy: xy, lambda xy: TensorDataset(*xy),
                                  lambda xy: Pairs(*xy)])
def test_simulate_trains_a_users_model(tmp_path, wrap):
    row = thinwire.simulate(model=Tiny, train=wrap(blobs(320, 0)), test=wrap(blobs(80, 1)),
                            codec="topk(ratio=0.5)+int8", error_feedback=True, out=tmp_path,
                            **COMMON)
    assert row["test_accuracy"] > 0.6  # chance is 0.25
    assert row["model"].endswith(":Tiny") and row["task"] == "custom"
    assert row["nodes"] == 2 and row["bytes_wire_total"] > 0
    saved = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert saved["test_accuracy"] == row["test_accuracy"]
    assert not any(name.endswith(":Tiny") for name in MODELS)  # registered for the run only


def test_simulate_model_factory_gets_shape_when_it_asks(tmp_path):
    seen = []

    def factory(num_classes, in_shape):
        seen.append((num_classes, in_shape))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0], num_classes))

    row = thinwire.simulate(model=factory, train=blobs(160, 0), test=blobs(40, 1),
                            out=tmp_path, **COMMON)
    assert seen == [(4, (6,))] and row["test_accuracy"] > 0.6


def test_simulate_builtin_task_and_config_keys(tmp_path):
    row = thinwire.simulate(task="synthetic", task_args={"n_samples": 160}, out=tmp_path,
                            communication={"sync_interval": 2}, policy="trigger", **COMMON)
    assert row["task"] == "synthetic" and row["model"] == "mlp" and row["policy"] == "trigger"


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(train=blobs(40, 0)), "give both train and test"),
    (dict(train=blobs(40, 0), test=(torch.zeros(3, 5), torch.zeros(3))), "test inputs are"),
    (dict(train=(torch.zeros(4, 6), torch.zeros(3)), test=blobs(8, 1)), "4 inputs and 3"),
    (dict(train=blobs(40, 0), test=blobs(8, 1), model=lambda: "net"), "not a torch.nn.Module"),
    (dict(train=blobs(40, 0), test=blobs(8, 1), nodez=3), "unknown key 'nodez'"),
])
def test_simulate_mistakes_are_config_errors(tmp_path, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        thinwire.simulate(out=tmp_path, **{**COMMON, **kwargs})
