"""The engine's view of ImageNet, GLUE and the synthetic text task (sampa.data.sources) and their models."""

from __future__ import annotations

import pytest
import torch
from problems import write_stsb, write_tiny_bert

from sampa.data.cifar import DataUnavailableError
from sampa.data.sources import (
    SOURCE_NAMES,
    TRAIN_SIZES,
    load_source,
    source_task_settings,
    squared_error,
    weights_location,
)
from sampa.glue_tasks import TASK_NAMES

transformers = pytest.importorskip("transformers")  # the nlp extra
from sampa.models.pretrained import SOURCE_MODEL_NAMES, build_source_model  # noqa: E402


def test_every_glue_task_is_a_source_with_its_size():
    assert {f"glue-{t}" for t in TASK_NAMES} <= set(SOURCE_NAMES)
    assert TRAIN_SIZES["glue-rte"] == 2_490 and TRAIN_SIZES["imagenet"] == 1_281_167
    assert source_task_settings("glue-cola") == {"epochs": 3, "rho": 0.01}
    assert source_task_settings("glue-mrpc") == {"epochs": 5, "rho": 0.05}
    assert source_task_settings("imagenet") == {}


def test_unknown_source_and_missing_data_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'glue'; choose one of: imagenet, glue-cola"):
        load_source("glue", root=tmp_path)
    with pytest.raises(DataUnavailableError, match="ImageNet-1K not found"):
        load_source("imagenet", root=tmp_path, workers=0)


def test_synthetic_text_source_trains_and_evaluates_a_tiny_bert():
    source = load_source("synthetic-text")
    assert source.num_classes == 4 and source.train_size == TRAIN_SIZES["synthetic-text"]
    torch.manual_seed(0)
    model = build_source_model("bert-tiny", source.num_classes)
    inputs, labels, indices = next(source.train_batches(8, seed=0, epoch=0))
    assert model(**inputs).shape == (8, 4) and labels.shape == indices.shape == (8,)
    scores = source.evaluate(model, 64)
    assert set(scores) == {"loss", "acc", "task_score"} and 0.0 <= scores["acc"] <= 1.0
    assert scores["task_score"] == scores["acc"]  # a plain classification task: accuracy is its score


def test_glue_source_reads_the_data_root_and_scores_the_task(tmp_path):
    write_stsb(tmp_path)
    with pytest.raises(Exception, match="BERT-base weights unavailable"):
        load_source("glue-stsb", root=tmp_path)  # the tokenizer comes with the weights
    write_tiny_bert(tmp_path)
    assert weights_location("bert-base", tmp_path) == str(tmp_path / "weights" / "bert-base-uncased")
    source = load_source("glue-stsb", root=tmp_path)
    assert source.regression and source.num_classes == 1 and source.train_size == 4
    model = build_source_model("bert-base", 1, tmp_path)  # the tiny weights, with a new regression head
    scores = source.evaluate(model, 2)
    assert set(scores) == {"loss", "acc", "pearson", "spearman", "task_score"}
    assert scores["acc"] is None  # a regression has no accuracy
    assert scores["task_score"] == pytest.approx((scores["pearson"] + scores["spearman"]) / 2)


def test_imagenet_source_reports_top5(tmp_path):
    write_jpeg = pytest.importorskip("torchvision.io").write_jpeg
    for split in ("train", "val"):
        for k in range(5):
            folder = tmp_path / "imagenet" / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            write_jpeg(torch.full((3, 40, 40), 50 * k, dtype=torch.uint8), str(folder / "a.JPEG"))
    source = load_source("imagenet", root=tmp_path, workers=0)
    assert source.num_classes == 5 and source.train_size == 5
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 5))
    scores = source.evaluate(model, 4)
    assert set(scores) == {"loss", "acc", "top5_acc"} and scores["top5_acc"] == 1.0  # 5 classes: top-5 = all


def test_source_models_and_the_regression_loss():
    assert SOURCE_MODEL_NAMES == ("bert-base", "bert-tiny", "resnet50", "vit-b16", "vit-tiny")
    with pytest.raises(ValueError, match="unknown model 'vit-l16'; choose one of: bert-base"):
        build_source_model("vit-l16", 10)
    loss = squared_error(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))
    assert loss.tolist() == [1.0, 4.0]
