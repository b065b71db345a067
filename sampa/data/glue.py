r"""GLUE's nine tasks (Table 6) from a local copy, tokenised once and held on the device; a synthetic task.

Two on-disk layouts under ``<data root>/glue/`` (data root: ``--data-root`` > ``$SAMPA_DATA`` > ``./data``):

* the GLUE TSVs as the benchmark's download script writes them: ``CoLA/train.tsv``, ``CoLA/dev.tsv``,
  ``SST-2/``, ``MRPC/``, ``STS-B/``, ``QQP/``, ``MNLI/`` (``dev_matched.tsv``), ``QNLI/``, ``RTE/``,
  ``WNLI/``;
* the Hugging Face hub's parquet files of ``nyu-mll/glue`` (``huggingface-cli download nyu-mll/glue
  --repo-type dataset --local-dir <data root>/glue``): ``cola/train-*.parquet``,
  ``cola/validation-*.parquet``, ...

GLUE's test labels are hidden, so the score is taken on the dev set (``validation``; MNLI: matched), as
fine-tuning papers report. Labels follow the hub's coding (MNLI: entailment 0, neutral 1, contradiction 2;
QNLI/RTE: entailment 0, not_entailment 1); STS-B is a regression on [0, 5].

A split is tokenised once (pairs as ``[CLS] a [SEP] b [SEP]``), padded to its longest sequence (at most
``max_length``) and held on the device as int32; batches are mappings of int64 tensors
(``input_ids``, ``attention_mask``, ``token_type_ids``) with their labels and sample indices, drawn in a
seeded order per (seed, epoch) like the image batches.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sampa.data.cifar import ENV_VAR, DataUnavailableError, damaged_files, resolve_root
from sampa.data.dataset import corrupt_labels
from sampa.data.seeding import STREAM_EPOCH, STREAM_SYNTHETIC, cpu_generator
from sampa.glue_tasks import FOLDER, GlueTask, glue_task, split_files  # the task table and file layout
from sampa.io import first_line

KEYS = ("input_ids", "attention_mask", "token_type_ids")
TextBatch = tuple[dict[str, Tensor], Tensor, Tensor]


# ----------------------------------------------------------------------------------------------
# Reading raw texts and labels


@dataclass
class RawSplit:
    """Texts (one list per text field) and labels (floats for STS-B, class ids otherwise)."""

    texts: list[list[str]]
    labels: list[float]


def read_glue(name: str, split: str, root: str | os.PathLike | None = None) -> RawSplit:
    """``split`` ("train" or "eval") of task ``name`` from the TSV or parquet layout in ``<root>/glue``."""
    task = glue_task(name)
    files = split_files(name, split, resolve_root(root))
    if files and files[0].suffix == ".tsv":
        return _read_tsv(task, files[0])
    if files:
        return _read_parquet(task, files)
    folder = resolve_root(root) / FOLDER
    tsv_file = folder / task.tsv.folder / ("train.tsv" if split == "train" else task.tsv.dev_file)
    hub_split = "train" if split == "train" else task.eval_split
    raise DataUnavailableError(
        f"GLUE {task.display} not found: put the GLUE TSVs at {tsv_file} or the hub's parquet files at "
        f"{folder / task.name}/{hub_split}-*.parquet (huggingface-cli download nyu-mll/glue "
        f"--repo-type dataset --local-dir {folder}), or set {ENV_VAR} to the folder above glue/"
    )


def _read_tsv(task: GlueTask, path: Path) -> RawSplit:
    import pandas as pd

    layout = task.tsv
    table = pd.read_csv(
        path, sep="\t", header=0 if layout.header else None, quoting=csv.QUOTE_NONE, dtype=str,
        keep_default_na=False, on_bad_lines="skip",
    )  # fmt: skip
    missing = [c for c in (*layout.text, layout.label) if c not in table.columns]
    if missing:
        raise DataUnavailableError(
            f"{path} lacks column(s) {missing}; expected the GLUE TSV of {task.display}"
        )
    labels = [_label(task, value, path) for value in table[layout.label]]
    return RawSplit([table[c].tolist() for c in layout.text], labels)


def _label(task: GlueTask, value: str, path: Path) -> float:
    codes = task.tsv.label_codes
    if codes:
        if value not in codes:
            raise DataUnavailableError(f"{path}: label {value!r} is not one of {', '.join(codes)}")
        return float(codes.index(value))
    return float(value)


def _read_parquet(task: GlueTask, paths: Sequence[Path]) -> RawSplit:
    import pandas as pd

    from sampa.extras import require

    require("nlp", "pyarrow")  # pandas' parquet engine

    table = pd.concat([_parquet(pd, p) for p in paths], ignore_index=True)
    return RawSplit([table[c].astype(str).tolist() for c in task.text], table["label"].astype(float).tolist())


def _parquet(pd: Any, path: Path) -> Any:
    """One parquet file as a frame; a file that is not one (a cut-off download) is one line naming it."""
    with damaged_files(functools.partial(_unreadable_parquet, path)):  # pyarrow's ArrowInvalid, OSError, ...
        return pd.read_parquet(path)


def _unreadable_parquet(path: Path, err: Exception) -> DataUnavailableError:
    return DataUnavailableError(
        f"{path} cannot be read ({type(err).__name__}: {first_line(err)[:200]}); an interrupted download "
        "leaves such files: delete it and download it again"
    )


# ----------------------------------------------------------------------------------------------
# Tokenised splits on the device


@dataclass
class TextSplit:
    """Token ids, attention mask, segment ids (int32 [N, L]); labels (int64, float32 for regression)."""

    tokens: dict[str, Tensor]
    labels: Tensor

    def __post_init__(self) -> None:
        shapes = {k: tuple(v.shape) for k, v in self.tokens.items()}
        if (
            set(self.tokens) != set(KEYS)
            or len(set(shapes.values())) != 1
            or len(self.labels) != len(self.tokens["input_ids"])
        ):
            raise ValueError(
                f"a text split needs {', '.join(KEYS)} of one shape [N, L] and N labels, got {shapes}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: str | torch.device) -> TextSplit:
        return TextSplit({k: v.to(device) for k, v in self.tokens.items()}, self.labels.to(device))


@dataclass
class TextData:
    """A text classification (or regression) task: train and eval splits on one device."""

    name: str
    num_labels: int
    train: TextSplit
    eval: TextSplit

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def train_batches(self, batch_size: int, *, seed: int, epoch: int) -> Iterator[TextBatch]:
        """One epoch of the train split in the (seed, epoch) order; the last partial batch is kept."""
        return text_batches(self.train, batch_size, seed=seed, epoch=epoch)

    def eval_batches(
        self, batch_size: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[TextBatch]:
        """The eval split in order (only its rows at ``rows(len(eval))``; default: all)."""
        part = rows(len(self.eval)) if rows else slice(None)
        return text_batches(self.eval, batch_size, part=part)


def synthetic_text_data(
    *,
    num_labels: int = 4,
    train_size: int = 512,
    eval_size: int = 256,
    label_noise: float = 0.1,
    device: str | torch.device = "cpu",
) -> TextData:
    """The dataset ``synthetic-text``: the marker task (:func:`synthetic_text`) with ``label_noise`` as train
    and eval splits."""
    splits = [
        synthetic_text(size, num_labels=num_labels, label_noise=label_noise, seed=seed).to(device)
        for size, seed in ((train_size, 0), (eval_size, 1))
    ]
    return TextData("synthetic-text", num_labels, *splits)


def load_tokenizer(
    weights: str | os.PathLike = "hub",
    *,
    allow_download: bool = False,
    local_dir: str | os.PathLike | None = None,
) -> Callable[..., dict]:
    """The tokenizer stored with the BERT weights (a local directory or ``"hub"``; the ``nlp`` extra);
    ``local_dir``: where local weights are looked for, named by the error when none are found."""
    from sampa.data.cifar import unreadable_weights
    from sampa.extras import require
    from sampa.models.bert import weights_place, weights_source

    transformers = require("nlp", "transformers")
    source = weights_source(weights, allow_download, local_dir)
    unreadable = functools.partial(unreadable_weights, "the BERT-base tokenizer", weights_place(source))
    with damaged_files(unreadable):  # transformers raises OSError, ValueError, ...
        return transformers.AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)


def tokenize(
    tokenizer: Callable[..., dict], raw: RawSplit, *, regression: bool, max_length: int = 128
) -> TextSplit:
    """Tokenise single texts or pairs with a ``transformers`` tokenizer, padded to the split's longest."""
    encoded = tokenizer(
        *raw.texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt",
        return_token_type_ids=True, return_attention_mask=True,
    )  # fmt: skip
    tokens = {k: encoded[k].to(torch.int32) for k in KEYS}
    dtype = torch.float32 if regression else torch.int64
    return TextSplit(tokens, torch.tensor(raw.labels, dtype=dtype))


def load_glue(
    name: str,
    tokenizer: Callable[..., dict],
    *,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    max_length: int = 128,
) -> TextData:
    """GLUE task ``name`` read from ``root`` and tokenised with ``tokenizer``, on ``device``."""
    task = glue_task(name)
    splits = [
        tokenize(tokenizer, read_glue(name, s, root), regression=task.regression, max_length=max_length).to(
            device
        )
        for s in ("train", "eval")
    ]
    return TextData(name, task.num_labels, *splits)


def text_batches(
    split: TextSplit, batch_size: int, *, seed: int | None = None, epoch: int = 0, part: slice = slice(None)
) -> Iterator[TextBatch]:
    """(int64 token tensors by name, labels, indices) batches, in (seed, epoch) order unless seed is None;
    only the rows of that order at ``part``."""
    n = len(split)
    if seed is None:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=cpu_generator(seed, STREAM_EPOCH, epoch))
    order = order[part].to(split.labels.device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield {k: v[idx].long() for k, v in split.tokens.items()}, split.labels[idx], idx


def synthetic_text(
    n: int,
    *,
    num_labels: int = 2,
    vocab_size: int = 64,
    length: int = 16,
    label_noise: float = 0.0,
    seed: int = 0,
) -> TextSplit:
    """A toy task learned in a few steps, reliably (the dataset ``synthetic-text``): every sequence
    ``[CLS=1] w ... w [SEP=2] pad=0 ...`` has one marker token ``3 + class`` at a random position among
    random filler words ``>= 3 + num_labels``; lengths vary. The label is the marker's class, except for
    a ``label_noise`` share of the sequences, labelled with another class
    (:func:`sampa.data.dataset.corrupt_labels`; so at most 1 - label_noise is attainable)."""
    if vocab_size < 4 + num_labels or length < 4 or n < 1 or not 0 <= label_noise < 1:
        raise ValueError(
            f"need vocab_size >= {4 + num_labels}, length >= 4, n >= 1, 0 <= label_noise < 1; "
            f"got {vocab_size}, {length}, {n}, {label_noise}"
        )
    gen = cpu_generator(seed, STREAM_SYNTHETIC)
    labels = torch.randint(0, num_labels, (n,), generator=gen)
    used = torch.randint(3, length + 1, (n,), generator=gen)  # tokens incl. [CLS] and [SEP]
    ids = torch.randint(3 + num_labels, vocab_size, (n, length), generator=gen)
    positions = torch.arange(length)
    mark = 1 + (torch.rand(n, generator=gen) * (used - 2)).long()  # strictly between [CLS] and [SEP]
    ids = torch.where(positions == mark[:, None], 3 + labels[:, None], ids)
    return _framed(ids, used, corrupt_labels(labels, num_labels, label_noise, seed)[0])


def _framed(ids: Tensor, used: Tensor, labels: Tensor) -> TextSplit:
    """Words ``ids`` as sequences ``[CLS=1] w ... w [SEP=2] pad=0 ...`` of ``used`` tokens each."""
    positions = torch.arange(ids.shape[1])
    ids = ids.clone()
    ids[:, 0] = 1
    ids = torch.where(positions == (used - 1)[:, None], torch.tensor(2), ids)
    mask = positions < used[:, None]
    ids = torch.where(mask, ids, torch.tensor(0))
    tokens = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return TextSplit({k: v.to(torch.int32) for k, v in tokens.items()}, labels)
