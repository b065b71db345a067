"""What a run needs that is missing (sampa.requirements): data folders, weights, extras; one line each."""

from __future__ import annotations

import pytest

from sampa import extras, requirements


@pytest.fixture
def empty_hub(monkeypatch):
    monkeypatch.setattr(requirements, "_in_hub_cache", lambda name: False)


def test_cifar_and_synthetic_runs_need_nothing_checked_here(tmp_path):
    assert requirements.missing("cifar10", "resnet56", tmp_path) == []  # prepare_data verifies CIFAR
    assert requirements.missing("synthetic", "tinycnn", tmp_path) == []


def test_imagenet_needs_both_splits(tmp_path):
    assert requirements.missing("imagenet", "resnet50", tmp_path) == [
        f"needs ImageNet at {tmp_path / 'imagenet'} (train/ and val/ class folders of JPEGs)"
    ]
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    assert len(requirements.missing("imagenet", "resnet50", tmp_path)) == 1
    (tmp_path / "imagenet" / "val").mkdir()
    assert requirements.missing("imagenet", "resnet50", tmp_path) == []


def test_weights_locally_or_in_the_hub_cache(tmp_path, monkeypatch, empty_hub):
    pytest.importorskip("timm", reason="the vision extra")
    [line] = requirements.missing("cifar10", "vit-b16", tmp_path)
    assert line.startswith(f"needs the ViT-B/16 (ImageNet-21k) weights at {tmp_path / 'weights'}")
    local = tmp_path / "weights" / "vit-b16-imagenet21k"
    local.mkdir(parents=True)
    assert requirements.missing("cifar10", "vit-b16", tmp_path) == [line]  # an empty folder is not weights
    (local / "model.safetensors").touch()
    assert requirements.missing("cifar10", "vit-b16", tmp_path) == []
    monkeypatch.setattr(requirements, "_in_hub_cache", lambda name: name == "vit-b16")
    assert requirements.missing("cifar100", "vit-b16", tmp_path / "elsewhere") == []


def test_glue_needs_the_task_files_and_bert_for_its_tokenizer(tmp_path, empty_hub):
    pytest.importorskip("transformers", reason="the nlp extra")
    needs = requirements.missing("glue-mnli", "bert-tiny", tmp_path)
    assert [n.split(" at ")[0] for n in needs] == ["needs GLUE MNLI", "needs the BERT-base weights"]
    folder = tmp_path / "glue" / "MNLI"
    folder.mkdir(parents=True)
    (folder / "train.tsv").touch()
    assert len(requirements.missing("glue-mnli", "bert-tiny", tmp_path)) == 2  # no dev_matched.tsv yet
    (folder / "dev_matched.tsv").touch()
    (tmp_path / "weights" / "bert-base-uncased").mkdir(parents=True)
    (tmp_path / "weights" / "bert-base-uncased" / "config.json").write_text("{}")
    assert requirements.missing("glue-mnli", "bert-base", tmp_path) == []
    parquet = tmp_path / "glue" / "rte"  # the hub's layout
    parquet.mkdir(parents=True)
    (parquet / "train-00000-of-00001.parquet").touch()
    (parquet / "validation-00000-of-00001.parquet").touch()
    assert requirements.missing("glue-rte", "bert-base", tmp_path) == []


def test_a_missing_extra_is_named_first(tmp_path, monkeypatch):
    monkeypatch.setattr(extras, "available", lambda extra: extra != "nlp")
    assert requirements.missing("glue-cola", "bert-base", tmp_path) == [
        "needs the nlp extra (pip install -e '.[nlp]')"
    ]
    assert requirements.missing("synthetic-text", "bert-tiny", tmp_path) == [
        "needs the nlp extra (pip install -e '.[nlp]')"
    ]


def test_missing_glue_tasks_of_one_folder_read_as_one_line(tmp_path):
    pytest.importorskip("transformers", reason="the nlp extra")
    lines = [requirements.missing(f"glue-{t}", "bert-base", tmp_path)[0] for t in ("cola", "sst2")]
    assert requirements.merged([*lines, "needs x", lines[0]]) == [
        f"needs GLUE CoLA, SST-2 at {tmp_path / 'glue'} (README: Tables 3, 5 and 6)",
        "needs x",
    ]


def test_hub_names_are_the_models():
    pytest.importorskip("timm", reason="the vision extra")
    from sampa.models import bert, vit

    assert requirements.HUB_WEIGHTS["vit-b16"][0] == f"timm/{vit.ARCHITECTURE}.{vit.DEFAULT_TAG}"
    assert requirements.HUB_WEIGHTS["bert-base"][0] == bert.HUB_NAME


def test_glue_files_are_checked_without_torch(tmp_path):
    # a cached workflow plan re-checks the GLUE files of its runs on every dry run: no torch import for it
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "glue" / "RTE" / name).write_text("index\tsentence1\tsentence2\tlabel\n")
    code = (
        "import sys; from pathlib import Path; from sampa.requirements import _glue; "
        f"data = Path({str(tmp_path)!r}); "
        "print(_glue('rte', data), _glue('cola', data) != [], 'torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.stdout.split() == ["[]", "True", "False"], proc.stderr
