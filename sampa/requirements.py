"""What a run needs that is not on this machine: data folders, pretrained weights, optional extras.

:func:`missing` answers it for a run's dataset and model, one line per missing thing, so the workflow
planner (:mod:`sampa.experiments`: such runs are not planned, their table cells say what they need) and
``sampa train`` (one line, exit 2, before the run directory is written) give the same answer.

CIFAR is not checked here: the workflow's ``prepare_data`` step verifies (or downloads) it, and its runs
say "needs data" when it cannot. Nor is the toy ImageFolder (``imagefolder-toy``): that step generates
it, and it needs no extra (torchvision, a core dependency, decodes it). Nothing here imports torch (a
cached dry run re-checks its runs' data and stays fast; the GLUE file layout is in :mod:`sampa.glue_tasks`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sampa import extras
from sampa.paths import IMAGENET_FOLDER, IMAGENET_SPLITS, WEIGHTS, data_root

#: the same weights in the Hugging Face hub cache: repository and the file that must be there
HUB_WEIGHTS = {
    "bert-base": ("google-bert/bert-base-uncased", ("config.json",)),
    "vit-b16": ("timm/vit_base_patch16_224.orig_in21k", ("model.safetensors", "pytorch_model.bin")),
}
WEIGHTS_NAMES = {"bert-base": "BERT-base", "vit-b16": "ViT-B/16 (ImageNet-21k)"}
#: name prefix of a model or dataset -> the optional extra it needs
EXTRA_NEEDED = {"bert-": "nlp", "glue-": "nlp", "vit-": "vision"}


def missing(dataset: str, model: str, root: str | os.PathLike | None = None) -> list[str]:
    """What a run of ``model`` on ``dataset`` needs that is not here, one line each ("needs ...").

    An absent extra hides the rest (its data and weights are checked once it is installed).
    """
    needed = [extra for name in (model, dataset) for p, extra in EXTRA_NEEDED.items() if name.startswith(p)]
    absent = [e for e in dict.fromkeys(needed) if not extras.available(e)]
    if absent:
        return [f"needs the {e} extra (pip install -e '.[{e}]')" for e in absent]
    folder = data_root(root)
    found = []
    if dataset == "imagenet":
        found += _imagenet(folder)
    elif dataset.startswith("glue-"):
        found += _glue(dataset.removeprefix("glue-"), folder)
    weights = [model] if model in WEIGHTS else []
    if dataset.startswith("glue-") and "bert-base" not in weights:  # its tokenizer comes with BERT-base
        weights.append("bert-base")
    found += [line for name in weights if (line := _weights(name, folder))]
    return found


def _imagenet(folder: Path) -> list[str]:
    imagenet = folder / IMAGENET_FOLDER
    if all((imagenet / split).is_dir() for split in IMAGENET_SPLITS):
        return []
    return [f"needs ImageNet at {imagenet} (train/ and val/ class folders of JPEGs)"]


def _glue(task: str, folder: Path) -> list[str]:
    from sampa.glue_tasks import FOLDER, GLUE_TASKS, split_files

    if task not in GLUE_TASKS:
        return []  # an unknown task is a config error, reported by validation
    if all(split_files(task, split, folder) for split in ("train", "eval")):
        return []
    info = GLUE_TASKS[task]
    return [
        f"needs GLUE {info.display} at {folder / FOLDER} ({info.tsv.folder}/ TSVs or {task}/ parquet files)"
    ]


def merged(needs: list[str]) -> list[str]:
    """``needs`` without repeats, the GLUE tasks missing from one folder in one line (first)."""
    lines = list(dict.fromkeys(needs))
    tasks: dict[str, list[str]] = {}
    for match in filter(None, map(_GLUE_LINE.fullmatch, lines)):
        tasks.setdefault(match.group(2), []).append(match.group(1))
    glue = [f"needs GLUE {', '.join(t)} at {at} (README: Tables 3, 5 and 6)" for at, t in tasks.items()]
    return glue + [line for line in lines if not _GLUE_LINE.fullmatch(line)]


_GLUE_LINE = re.compile(r"needs GLUE (\S+) at (.+) \(\S+/ TSVs or \S+/ parquet files\)")


def _weights(name: str, folder: Path) -> str | None:
    local = folder / WEIGHTS[name]
    files = HUB_WEIGHTS[name][1]
    if local.is_file() or any((local / f).is_file() for f in files) or _in_hub_cache(name):
        return None
    repo = HUB_WEIGHTS[name][0]
    return f"needs the {WEIGHTS_NAMES[name]} weights at {local} or in the hub cache ({repo})"


def _in_hub_cache(name: str) -> bool:
    """Whether the hub cache holds the weights (never downloads; needs huggingface_hub, from the extras)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo, files = HUB_WEIGHTS[name]
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
