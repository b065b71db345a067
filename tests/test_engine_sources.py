"""The engine's settings of issue 15 (clipping, linear schedule) and its runs on the sources of
``sampa.data.sources``: text batches as mappings (BERT/GLUE), ImageNet folders with top-5."""

from __future__ import annotations

import json

import torch
from problems import tiny_run

from sampa.models import build_model
from sampa.train import train


def _parameters(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The trainable parameters of a TinyCNN state dict as one vector (no BatchNorm statistics)."""
    names = [name for name, _ in build_model("tinycnn", 10).named_parameters()]
    return torch.cat([state[name].flatten().double() for name in names])


def test_clip_norm_bounds_every_step_of_a_run(tmp_path):
    """Plain SGD with G clipped to norm c moves the weights by at most lr * c per step; a clip norm
    no gradient reaches changes nothing (bitwise), a small one changes the run."""
    base = {"epochs": 1, "momentum": 0.0, "weight_decay": 0.0, "lr": 0.5}
    runs = {c: train(tiny_run(clip_norm=c, **base), tmp_path / str(c), log_progress=False)
            for c in (None, 1e9, 1e-3)}  # fmt: skip
    assert runs[1e9]["final_train_loss"] == runs[None]["final_train_loss"]
    assert runs[1e9]["test_loss"] == runs[None]["test_loss"]
    assert runs[1e-3]["test_loss"] != runs[None]["test_loss"]
    assert runs[1e-3]["config"]["clip_norm"] == 1e-3
    torch.manual_seed(0)
    start = _parameters(build_model("tinycnn", 10).state_dict())
    steps = runs[1e-3]["time"]["steps_per_epoch"]
    def moved(run: str) -> float:
        return float((_parameters(torch.load(tmp_path / run / "best.pt", weights_only=True)) - start).norm())

    assert 0 < moved("0.001") <= steps * 0.5 * 1e-3 * (1 + 1e-6)
    assert moved("None") > 10 * steps * 0.5 * 1e-3
    assert json.loads((tmp_path / "0.001" / "config.json").read_text())["clip_norm"] == 1e-3
