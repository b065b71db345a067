r"""BERT for GLUE fine-tuning (Table 6), through Hugging Face ``transformers`` (the ``nlp`` extra).

:class:`BertClassifier` takes a batch's tensors as keyword arguments (``model(**inputs)`` with
``input_ids``, ``attention_mask``, ``token_type_ids``) and returns the logits tensor [B, num_labels],
not a ``ModelOutput``, so the methods use it like an image model. ``num_labels=1`` is regression (STS-B).

Weights (``bert-base-uncased``) come from a local directory (``save_pretrained`` layout: config.json,
model.safetensors, vocab.txt, ...) or the hub cache, never downloaded unless ``allow_download``.
The pooler and encoder are pretrained; the classifier is new (as in ``run_glue``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from sampa.data.cifar import WeightsUnavailableError, damaged_files, unreadable_weights
from sampa.extras import require

HUB_NAME = "google-bert/bert-base-uncased"
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class BertClassifier(nn.Module):
    """A ``BertForSequenceClassification`` returning plain logits [B, num_labels].

    Called as ``model(**inputs)`` (the method contract's form for a mapping batch) or ``model(inputs)``.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self,
        input_ids: Tensor | Mapping[str, Tensor],
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        if isinstance(input_ids, Mapping):
            return self.forward(**{k: input_ids[k] for k in INPUT_KEYS if k in input_ids})
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


def bert_base(
    num_labels: int,
    weights: str | os.PathLike = "hub",
    *,
    allow_download: bool = False,
    local_dir: str | os.PathLike | None = None,
) -> BertClassifier:
    """Pretrained BERT-base(-uncased) from a local directory or ``"hub"`` (the cache of ``HUB_NAME``);
    ``local_dir``: where the caller looks for local weights, named by the error when none are found."""
    transformers = require("nlp", "transformers")
    source = weights_source(weights, allow_download, local_dir)
    unreadable = functools.partial(unreadable_weights, "the BERT-base weights", weights_place(source))
    with damaged_files(unreadable):  # transformers raises OSError, ValueError, safetensors' own errors, ...
        bert = transformers.BertForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, local_files_only=not allow_download, ignore_mismatched_sizes=True
        )  # ignore_mismatched_sizes: a fine-tuned checkpoint's classifier is replaced, as bert-base has none
    return BertClassifier(bert)


def weights_place(source: str) -> str:
    """Where the weights of ``source`` (:func:`weights_source`) are, as an error names it."""
    return f"the hub cache's {HUB_NAME}" if source == HUB_NAME else source


def weights_source(
    weights: str | os.PathLike, allow_download: bool = False, local_dir: str | os.PathLike | None = None
) -> str:
    """The directory or hub name to load BERT-base from, or a one-line error naming what to put where."""
    if str(weights) != "hub":
        path = Path(weights).expanduser()
        if not (path / "config.json").is_file():
            raise WeightsUnavailableError(_missing(f"no config.json in {path}", path))
        return str(path)
    if allow_download or _in_hub_cache(HUB_NAME):
        return HUB_NAME
    raise WeightsUnavailableError(_missing("not in the hugging face hub cache", local_dir))


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _missing(reason: str, local_dir: str | os.PathLike | None) -> str:
    where = local_dir or "a directory passed as weights"
    return (
        f"BERT-base weights unavailable ({reason}); put a save_pretrained directory of {HUB_NAME} "
        f"(config.json, model.safetensors, vocab.txt, tokenizer files) at {where} "
        f"(huggingface-cli download {HUB_NAME} --local-dir {local_dir or 'DIR'}), "
        f"or fill the hub cache with `huggingface-cli download {HUB_NAME}`"
    )


def bert_tiny(num_labels: int, vocab_size: int = 64, max_length: int = 32) -> BertClassifier:
    """A small randomly initialised BERT (width 64, 2 layers, 2 heads) for tests and toy runs.

    Width 64, not 32: at width 32 whether a run on the dataset ``synthetic-text`` left its plateau within
    smoke Table 6's 8 epochs was luck (about 45-70 % on some seeds, configs/smoke.yaml)."""
    transformers = require("nlp", "transformers")
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=max_length,
        num_labels=num_labels,
    )
    return BertClassifier(transformers.BertForSequenceClassification(config))
