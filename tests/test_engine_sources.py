"""The engine's settings of issue 15 (clipping, linear schedule) and its runs on the sources of
``sampa.data.sources``: text batches as mappings (BERT/GLUE), ImageNet folders with top-5."""

from __future__ import annotations

import json

import pytest
import torch
from problems import tiny_run, write_stsb, write_tiny_bert

from sampa import train as engine
from sampa.config import ConfigError, RunConfig, validate
from sampa.data import sources
from sampa.data.sources import load_source
from sampa.models import build_model
from sampa.rundir import METRICS_KEYS
from sampa.train import EngineState, build_metrics, lr_at, selection_key, train


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


@pytest.mark.parametrize(
    ("optimizer", "hparams"),
    [("sgd", {}), ("sam", {}), ("sampa", {}), ("esam", {"gamma": 0.5}), ("mesa", {})],
    ids=["sgd", "sam", "sampa", "esam-sds", "mesa"],
)
def test_text_run_with_mapping_batches_resumes_and_records_its_metric(tmp_path, optimizer, hparams):
    """BERT-tiny on the synthetic text task (batches are mappings): the linear schedule is in the log,
    the task metric in metrics.json, and an interrupted run ends exactly as an uninterrupted one. BERT
    draws dropout masks: ESAM's SDS forward (``forward_only`` at x + e) draws them from torch's global
    generator, which the checkpoint carries; MESA's teacher (eval mode) draws none."""
    pytest.importorskip("transformers")  # the nlp extra
    cfg = _text_run(optimizer, hparams=hparams)
    whole = train(cfg, tmp_path / "whole", log_progress=False)
    assert train(cfg, tmp_path / "split", stop_after=1, log_progress=False) is None
    resumed = train(cfg, tmp_path / "split", log_progress=False)
    for key in ("test_acc", "test_loss", "final_train_loss", "test_task_metrics"):
        assert resumed[key] == whole[key], key
    assert whole["status"] == "complete" and whole["test_top5_acc"] is None
    assert whole["test_task_metrics"] == {"acc": whole["test_acc"]}  # a fraction, as every score
    assert whole["test_task_score"] == whole["test_acc"] and whole["test_is_val"] is True
    rows = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    want = [0.0, pytest.approx(1e-3 * 8 / 14)]
    assert [r["lr"] for r in rows] == [lr_at(cfg, 0, 0), lr_at(cfg, 1, 0)] == want
    # 8 steps an epoch, 2 of the 16 warming up: step 8 is 8 steps before the end of a 14-step decay


def test_text_run_learns_the_synthetic_task(tmp_path):
    pytest.importorskip("transformers")
    cfg = _text_run("sampa", epochs=8, batch_size=32, lr=3e-3, warmup=0.0, weight_decay=0.0)
    metrics = train(cfg, tmp_path, log_progress=False)
    # the most frequent class gets about 0.3, the marker 0.9 (10 % label noise)
    assert metrics["test_task_metrics"]["acc"] > 0.6


#: the paper's Table 6 AdamW cells and each task's GLUE score (mean of its metrics), as fractions
PAPER_ADAMW = {
    "cola": ({"mcc": 0.566}, 0.566),
    "mrpc": ({"acc": 0.856, "f1": 0.899}, 0.8775),
    "stsb": ({"pearson": 0.854, "spearman": 0.853}, 0.8535),
    "qqp": ({"acc": 0.902, "f1": 0.868}, 0.885),
    "mnli": ({"acc": 0.826}, 0.826),
}


@pytest.mark.parametrize("task", list(PAPER_ADAMW))
def test_glue_record_has_plain_accuracy_task_metrics_and_the_task_score_as_fractions(task):
    """metrics.json of a GLUE run: test_acc is plain accuracy (null for STS-B), test_task_metrics the
    task's metrics, test_task_score their mean, all fractions; the best epoch is chosen by the validation
    task score."""
    metrics, score = PAPER_ADAMW[task]
    acc = None if task == "stsb" else 0.7  # plain accuracy, unlike MRPC/QQP's task score
    evals = {"loss": 0.4, "acc": metrics.get("acc", acc), **metrics, "task_score": score}
    row = {"epoch": 1, "diverged": False, "train_loss": 0.5, "train_acc": 0.6, "epoch_time_s": 1.0,
           "passes_per_step": {"forward": 1.0}, "val_acc": evals["acc"],
           "val_task_score": score}  # fmt: skip
    state = EngineState(epoch=1, history=[row], best_val_score=score, best_epoch=1)
    cfg = RunConfig(dataset=f"glue-{task}", model="bert-base", epochs=1)
    record = build_metrics(cfg, state, evals, evals, evals, steps_per_epoch=10)
    assert selection_key(cfg) == "val_task_score" and selection_key(RunConfig()) == "val_acc"
    assert record["test_task_metrics"] == pytest.approx(metrics)
    assert record["test_task_score"] == pytest.approx(score)
    assert record["best_val_task_score"] == pytest.approx(score)
    assert record["metrics_version"] == 2 and record["test_is_val"] is True
    assert record["test_acc"] == record["best_val_acc"] == evals["acc"]
    assert (record["test_acc"] is None) == (task == "stsb")
    assert set(record) | {"provenance", "backend", "memory"} == set(METRICS_KEYS)


def test_stsb_run_selects_by_task_score_and_has_no_accuracy(tmp_path, monkeypatch, capsys):
    """A GLUE regression task through the engine (tiny BERT and a tiny STS-B copy): no accuracy anywhere,
    the best epoch is the one with the highest validation task score."""
    pytest.importorskip("transformers")
    write_tiny_bert(tmp_path)
    write_stsb(tmp_path, rows=12)
    monkeypatch.setitem(sources.TRAIN_SIZES, "glue-stsb", 12)  # the real STS-B has 5,749 pairs
    cfg = _text_run("sam", model="bert-base", dataset="glue-stsb", data_root=str(tmp_path), epochs=3,
                    batch_size=4, hparams={"rho": 0.005})  # fmt: skip
    metrics = train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    scores = [r["val_task_score"] for r in rows]
    assert metrics["best_epoch"] == 1 + scores.index(max(scores))
    assert metrics["best_val_task_score"] == pytest.approx(max(scores))
    assert all(r["val_acc"] is None for r in rows) and metrics["test_acc"] is None
    assert set(metrics["test_task_metrics"]) == {"pearson", "spearman"}
    assert metrics["test_task_score"] == pytest.approx(sum(metrics["test_task_metrics"].values()) / 2)
    assert capsys.readouterr().err.count("val score") == 3  # one progress line per epoch


def test_imagenet_folder_run_records_top5(tmp_path, monkeypatch):
    """A generated ImageFolder (6 classes, 2 JPEGs each) trains through the engine; top-5 is recorded."""
    write_jpeg = pytest.importorskip("torchvision.io").write_jpeg
    for split in ("train", "val"):
        for k in range(6):
            folder = tmp_path / "imagenet" / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for i in range(2):
                write_jpeg(torch.full((3, 48, 48), 40 * k + i, dtype=torch.uint8), str(folder / f"{i}.JPEG"))
    cfg = RunConfig(model="tinycnn", dataset="imagenet", optimizer="sam", epochs=1, batch_size=4, lr=0.01,
                    data_root=str(tmp_path), device="cpu", threads=1, eval_batch_size=8,
                    num_workers=1)  # fmt: skip
    loads = []
    monkeypatch.setattr(engine, "load_source", lambda *a, **kw: loads.append(kw) or load_source(*a, **kw))
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert [kw["workers"] for kw in loads] == [1]  # the run's num_workers reaches the loader
    assert metrics["time"]["steps_per_epoch"] == 3  # 12 images, not ImageNet's 1.28M
    assert metrics["test_top5_acc"] >= metrics["test_acc"] and metrics["test_task_metrics"] is None
    assert metrics["test_task_score"] is None and metrics["best_val_task_score"] is None
    assert metrics["test_top5_acc"] in {i / 12 for i in range(13)}


def test_toy_imagefolder_run_records_top5(tmp_path):
    """The generated toy ImageFolder (10 classes, 240 JPEGs) trains through the engine; top-5 recorded."""
    cfg = RunConfig(model="tinycnn", dataset="imagefolder-toy", optimizer="sampa", epochs=1, batch_size=32,
                    lr=0.05, data_root=str(tmp_path / "data"), device="cpu", threads=1, num_workers=1,
                    hparams={"rho": 0.1, "lam": 0.2})  # fmt: skip
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert (tmp_path / "data" / "imagefolder-toy" / "val").is_dir()  # generated on first use
    assert metrics["time"]["steps_per_epoch"] == 8  # 240 images in batches of 32
    assert metrics["test_top5_acc"] in {i / 100 for i in range(101)}  # 100 val/ images
    assert metrics["test_top5_acc"] >= metrics["test_acc"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_top5_acc"] == metrics["test_top5_acc"]


def _counted_evaluations(monkeypatch) -> list[str]:
    """The split of every evaluation pass the engine makes from now on (it wraps evaluate_sharded)."""
    passes: list[str] = []
    real = engine.evaluate_sharded

    def counted(model, data, split, *args):
        passes.append(split)
        return real(model, data, split, *args)

    monkeypatch.setattr(engine, "evaluate_sharded", counted)
    return passes


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _source_run(kind: str, tmp_path, **changes) -> RunConfig:
    if kind == "text":  # GLUE-like: a text task scored by its task metrics on its one eval set
        pytest.importorskip("transformers")
        return _text_run("sgd", lr=3e-3, **changes)
    return RunConfig(model="tinycnn", dataset="imagefolder-toy", optimizer="sgd", epochs=2, batch_size=32,
                     lr=0.05, data_root=str(tmp_path / "data"), device="cpu", threads=1, num_workers=1,
                     **changes)  # fmt: skip


@pytest.mark.parametrize("kind", ["text", "imagefolder"])
def test_one_eval_set_is_evaluated_once_per_epoch_and_never_again(tmp_path, monkeypatch, kind):
    """Validation = test (GLUE's dev set, ImageNet's val/): one pass per epoch, none at the end; test_* are
    the best epoch's validation scores, final_* the last epoch's, and equal to evaluating again."""
    cfg = _source_run(kind, tmp_path)
    passes = _counted_evaluations(monkeypatch)
    metrics = train(cfg, tmp_path / "once", log_progress=False)
    assert passes == ["val"] * cfg.epochs and metrics["test_is_val"] is True
    rows = _log(tmp_path / "once")
    best, last = rows[metrics["best_epoch"] - 1], rows[-1]
    for key in ("acc", "loss", "top5_acc", "task_score"):  # top-5: ImageNet's; the task score: text's
        assert metrics[f"test_{key}"] == best.get(f"val_{key}"), key
    assert metrics["final_val_acc"] == metrics["final_test_acc"] == last["val_acc"]
    assert metrics["final_test_loss"] == last["val_loss"]
    assert (metrics["test_task_metrics"] is None) == (kind == "imagefolder")

    passes.clear()  # the same run evaluating the best checkpoint and the last model again
    monkeypatch.setattr(engine, "test_is_val", lambda _cfg: False)
    again = train(cfg, tmp_path / "twice", log_progress=False)
    assert passes == ["val"] * cfg.epochs + ["test", "test"]
    for key in ("test_acc", "test_loss", "test_top5_acc", "test_task_metrics", "final_test_acc"):
        assert again[key] == metrics[key], key


def test_test_every_epoch_copies_the_validation_scores_of_one_eval_set(tmp_path, monkeypatch):
    cfg = _source_run("imagefolder", tmp_path, test_every_epoch=True)
    passes = _counted_evaluations(monkeypatch)
    train(cfg, tmp_path / "run", log_progress=False)
    assert passes == ["val"] * cfg.epochs
    for row in _log(tmp_path / "run"):
        assert row["test_acc"] == row["val_acc"] and row["test_top5_acc"] == row["val_top5_acc"]


def test_separate_test_set_is_evaluated_for_the_best_and_the_last_model(tmp_path, monkeypatch):
    """A held-out validation split (CIFAR-style): one pass per epoch on val, then two on test (the
    best-validation checkpoint and the last model); the last model's val scores are the last epoch's."""
    cfg = tiny_run(epochs=2)
    passes = _counted_evaluations(monkeypatch)
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert passes == ["val", "val", "test", "test"] and metrics["test_is_val"] is False
    assert metrics["final_val_acc"] == _log(tmp_path / "run")[-1]["val_acc"]


def test_missing_extra_or_data_is_one_line(tmp_path, monkeypatch, capsys):
    from sampa import extras
    from sampa.cli import main

    argv = ["train", "--out", str(tmp_path / "x"), "--device", "cpu"]
    assert main([*argv, "--dataset", "imagenet", "--model", "resnet50", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"needs ImageNet at {tmp_path / 'imagenet'}" in err
    assert not (tmp_path / "x").exists()  # checked before the run directory (config.json) is written
    monkeypatch.setattr(extras, "available", lambda extra: extra != "nlp")
    needs = r"model 'bert-tiny' needs the nlp extra: pip install -e '.\[nlp\]'"
    with pytest.raises(ConfigError, match=needs):
        validate(_text_run("sgd"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"model": "vit-b16", "dataset": "synthetic"},
            r"ViT-B/16 weights vit_base_patch16_224.orig_in21k unavailable \(not in the hugging face hub "
            r"cache\); put model.safetensors of https://huggingface.co/timm/\S+ "
            r"into \S+/weights/vit-b16-imagenet21k ",
        ),
        (
            {"model": "bert-base", "dataset": "synthetic-text"},
            r"BERT-base weights unavailable \(not in the hugging face hub cache\); put a save_pretrained "
            r"directory .* at \S+/weights/bert-base-uncased ",
        ),
        (  # the data is there, the tokenizer (it comes with the weights) is not
            {"model": "bert-base", "dataset": "glue-stsb"},
            r"BERT-base weights unavailable .* at \S+/weights/bert-base-uncased ",
        ),
        (
            {"model": "bert-tiny", "dataset": "glue-cola", "tiny_bert": True},
            r"GLUE CoLA not found: put the GLUE TSVs at \S+/glue/CoLA/train.tsv or the hub's parquet files",
        ),
        ({"model": "resnet50", "dataset": "imagenet"}, r"ImageNet-1K not found: put the ImageFolder"),
    ],
)
def test_loaders_name_missing_weights_or_data_in_one_line(tmp_path, monkeypatch, capsys, settings, message):
    """Every missing piece of an ImageNet, GLUE or ViT run, when the engine reaches it: one line naming
    what to put where, a DataUnavailableError (``sampa train``: exit status 2), no run results."""
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    from sampa.cli import main
    from sampa.data import DataUnavailableError
    from sampa.models import bert, vit

    monkeypatch.setattr(bert, "_in_hub_cache", lambda repo: False)  # whatever this machine's cache holds
    monkeypatch.setattr(vit, "_hub_cached_file", lambda repo: None)
    monkeypatch.setitem(sources.TRAIN_SIZES, "glue-stsb", 4)
    write_stsb(tmp_path)
    if settings.pop("tiny_bert", False):
        write_tiny_bert(tmp_path)
    cfg = RunConfig(**settings, epochs=1, batch_size=2, device="cpu", data_root=str(tmp_path))
    with pytest.raises(DataUnavailableError, match=message) as err:
        train(cfg, tmp_path / "run", log_progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "run" / "metrics.json").exists()
    argv = ["train", "--settings", json.dumps(cfg.to_dict()), "--out", str(tmp_path / "cli")]
    capsys.readouterr()  # drop what writing the tiny weights printed
    assert main(argv) == 2 and capsys.readouterr().err.count("\n") == 1  # one line, whichever check
