"""The engine's settings of issue 15 (clipping, linear schedule) and its runs on the sources of
``sampa.data.sources``: text batches as mappings (BERT/GLUE), ImageNet folders with top-5."""

from __future__ import annotations

import json

import pytest
import torch
from problems import tiny_run

from sampa.config import ConfigError, RunConfig, validate
from sampa.models import build_model
from sampa.train import lr_at, train


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


def _text_run(optimizer: str, **changes) -> RunConfig:
    values = dict(model="bert-tiny", dataset="synthetic-text", optimizer=optimizer, epochs=2, batch_size=64,
                  base_optimizer="adamw", lr=1e-3, schedule="linear", warmup=0.1, clip_norm=1.0,
                  label_smoothing=0.0, device="cpu", threads=1, eval_batch_size=256)  # fmt: skip
    return RunConfig(**(values | changes))


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "sampa"])
def test_text_run_with_mapping_batches_resumes_and_records_its_metric(tmp_path, optimizer):
    """BERT-tiny on the synthetic text task (batches are mappings): the linear schedule is in the log,
    the task metric in metrics.json, and an interrupted run ends exactly as an uninterrupted one."""
    pytest.importorskip("transformers")  # the nlp extra
    cfg = _text_run(optimizer)
    whole = train(cfg, tmp_path / "whole", log_progress=False)
    assert train(cfg, tmp_path / "split", stop_after=1, log_progress=False) is None
    resumed = train(cfg, tmp_path / "split", log_progress=False)
    for key in ("test_acc", "test_loss", "final_train_loss", "test_task_metrics"):
        assert resumed[key] == whole[key], key
    assert whole["status"] == "complete" and whole["test_top5_acc"] is None
    assert whole["test_task_metrics"] == {"acc": whole["test_acc"]}
    rows = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    want = [0.0, pytest.approx(1e-3 * 8 / 14)]
    assert [r["lr"] for r in rows] == [lr_at(cfg, 0, 0), lr_at(cfg, 1, 0)] == want
    # 8 steps an epoch, 2 of the 16 warming up: step 8 is 8 steps before the end of a 14-step decay


def test_text_run_learns_the_synthetic_task(tmp_path):
    pytest.importorskip("transformers")
    cfg = _text_run("sampa", epochs=4, batch_size=32, lr=3e-3, warmup=0.0, weight_decay=0.0)
    metrics = train(cfg, tmp_path, log_progress=False)
    assert metrics["test_task_metrics"]["acc"] > 0.9  # chance: 0.5


def test_imagenet_folder_run_records_top5(tmp_path):
    """A generated ImageFolder (6 classes, 2 JPEGs each) trains through the engine; top-5 is recorded."""
    write_jpeg = pytest.importorskip("torchvision.io").write_jpeg
    for split in ("train", "val"):
        for k in range(6):
            folder = tmp_path / "imagenet" / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for i in range(2):
                write_jpeg(torch.full((3, 48, 48), 40 * k + i, dtype=torch.uint8), str(folder / f"{i}.JPEG"))
    cfg = RunConfig(model="tinycnn", dataset="imagenet", optimizer="sam", epochs=1, batch_size=4, lr=0.01,
                    data_root=str(tmp_path), device="cpu", threads=1, eval_batch_size=8)  # fmt: skip
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert metrics["time"]["steps_per_epoch"] == 3  # 12 images, not ImageNet's 1.28M
    assert metrics["test_top5_acc"] >= metrics["test_acc"] and metrics["test_task_metrics"] is None
    assert metrics["test_top5_acc"] in {i / 12 for i in range(13)}


def test_missing_extra_or_data_is_one_line(tmp_path, monkeypatch, capsys):
    from sampa import extras
    from sampa.cli import main

    argv = ["train", "--out", str(tmp_path / "x"), "--device", "cpu"]
    assert main([*argv, "--dataset", "imagenet", "--model", "resnet50", "--data-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setattr(extras, "available", lambda extra: extra != "nlp")
    needs = r"model 'bert-tiny' needs the nlp extra: pip install -e '.\[nlp\]'"
    with pytest.raises(ConfigError, match=needs):
        validate(_text_run("sgd"))
