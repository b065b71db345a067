"""Small problems shared by the optimizer tests: least squares with a hand gradient, a BatchNorm
classifier, their batches, and an executor that records the jobs it evaluated."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sampa.optim import GradJob, SequentialExecutor

Batch = tuple[torch.Tensor, torch.Tensor]
#: what a finished run directory holds, no temporary file or checkpoint left (sampa.rundir)
FINISHED_RUN_FILES = [".lock", "best.pt", "config.json", "log.jsonl", "metrics.json"]


class LeastSquares(nn.Module):
    """Linear model without bias: output = X w (one output); the parameter's name is configurable (ASAM
    treats "bias" tensors specially), ``vector`` is the parameter whatever its name."""

    def __init__(self, dim: int = 3, seed: int = 0, param_name: str = "w") -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.param_name = param_name
        self.register_parameter(param_name, nn.Parameter(torch.randn(dim, generator=gen)))

    @property
    def vector(self) -> torch.Tensor:
        return self._parameters[self.param_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.vector)[:, None]


def squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out[:, 0] - y) ** 2


def ls_grad(w: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Hand gradient of mean (x.w - y)^2: 2/n X^T (X w - y)."""
    x, y = batch
    return 2.0 / x.shape[0] * x.T @ (x @ w - y)


def ls_batches(n: int, size: int = 8, dim: int = 3, seed: int = 1) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, dim, generator=gen), torch.randn(size, generator=gen)) for _ in range(n)]


class BNNet(nn.Module):
    """4 features -> 6 (BatchNorm, ReLU) -> 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


def class_batches(n: int, size: int = 16, seed: int = 3) -> list[Batch]:
    """n batches of (4 features, one of 3 labels) for :class:`BNNet`."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 4, generator=gen), torch.randint(0, 3, (size,), generator=gen)) for _ in range(n)
    ]


def indexed_batches(n: int = 3, size: int = 16, seed: int = 3) -> list[tuple[torch.Tensor, ...]]:
    """:func:`class_batches` with the samples' dataset indices (disjoint across batches), for SAF."""
    batches = class_batches(n, size, seed)
    return [(x, y, torch.arange(i * size, (i + 1) * size)) for i, (x, y) in enumerate(batches)]


#: steps per epoch of the method-level runs (:func:`run_steps`)
STEPS_PER_EPOCH = 3


def run_steps(method, data: list, steps: int, start: int = 0, epochs: int = 4) -> list:
    """Steps start..steps-1 of a run cycling over indexed ``data``; STEPS_PER_EPOCH batches per epoch."""
    records = []
    for t in range(start, steps):
        if t % STEPS_PER_EPOCH == 0:
            method.start_epoch(t // STEPS_PER_EPOCH, epochs, STEPS_PER_EPOCH)
        x, y, idx = data[t % len(data)]
        records.append(method.step(x, y, indices=idx))
    return records


def sgd(model: nn.Module, lr: float = 0.1, momentum: float = 0.9, wd: float = 5e-4) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)


class RecordingExecutor(SequentialExecutor):
    """Sequential executor that remembers every job it evaluated, one list per gradients() call."""

    def __init__(self) -> None:
        self.calls: list[list[GradJob]] = []

    def evaluate(self, method, jobs):
        self.calls.append(list(jobs))
        return super().evaluate(method, jobs)


def assert_resume_is_exact(fresh, data: list, cut: int, path) -> None:
    """Stepping through ``data`` in one go, and checkpointing after ``cut`` batches, loading (weights
    only) into a ``fresh()`` ``(model, method)`` and finishing, give equal parameters and buffers."""
    from sampa import io

    model_a, method_a = fresh()
    for batch in data:
        method_a.step(*batch)
    model_b, method_b = fresh()
    for batch in data[:cut]:
        method_b.step(*batch)
    io.save_torch(path, {"model": model_b.state_dict(), "method": method_b.state_dict()})
    checkpoint = io.load_torch(path)
    model_c, method_c = fresh()
    model_c.load_state_dict(checkpoint["model"])
    method_c.load_state_dict(checkpoint["method"])
    for batch in data[cut:]:
        method_c.step(*batch)
    for a, c in zip(model_a.state_dict().values(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c)


def tiny_run(**overrides):
    """A RunConfig of a few seconds: TinyCNN on 200 synthetic images, SGD, 3 epochs, one CPU thread."""
    from sampa.config import RunConfig

    values = dict(
        model="tinycnn",
        dataset="synthetic",
        optimizer="sgd",
        epochs=3,
        batch_size=32,
        lr=0.05,
        synthetic_train_size=200,
        synthetic_test_size=100,
        device="cpu",
        threads=1,
    )
    return RunConfig(**(values | overrides))


class TinyText(nn.Module):
    """A text classifier called with keyword tensors, as Hugging Face models are: token and segment
    embeddings, LayerNorm, mean over the unmasked tokens, a linear head (3 classes)."""

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.segments = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.norm(self.tokens(input_ids) + self.segments(token_type_ids))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))


class PackedTinyText(TinyText):
    """The same model fed one tensor: [batch, length, 3] = (input_ids, attention_mask, token_type_ids)."""

    def forward(self, packed: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(packed[..., 0], packed[..., 1], packed[..., 2])


def text_batches(
    n: int = 3, size: int = 12, length: int = 6, seed: int = 4
) -> list[tuple[dict, torch.Tensor]]:
    """n batches of ({input_ids, attention_mask, token_type_ids}, labels) for :class:`TinyText`; every
    sequence keeps at least two tokens, the second half of each is segment 1."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        lengths = torch.randint(2, length + 1, (size, 1), generator=gen)
        positions = torch.arange(length).expand(size, length)
        inputs = {
            "input_ids": torch.randint(0, 20, (size, length), generator=gen),
            "attention_mask": (positions < lengths).long(),
            "token_type_ids": (positions >= length // 2).long(),
        }
        batches.append((inputs, torch.randint(0, 3, (size,), generator=gen)))
    return batches


def packed(inputs: dict) -> torch.Tensor:
    """A text batch as the one tensor :class:`PackedTinyText` takes."""
    return torch.stack([inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]], dim=-1)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def write_tiny_bert(root: Path) -> Path:
    """A tiny BERT and its tokenizer where the paper's BERT-base is looked for (``<root>/weights``)."""
    import transformers  # the nlp extra: callers skip without it

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "."]
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    folder = root / "weights" / "bert-base-uncased"
    transformers.BertTokenizerFast(str(vocab)).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertForPreTraining(config).save_pretrained(folder)
    return folder


def write_stsb(root: Path, rows: int = 4) -> None:
    """STS-B's GLUE TSVs (train and dev alike) with ``rows`` pairs scored 0, 1, ... under ``root/glue``."""
    folder = root / "glue" / "STS-B"
    folder.mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    lines = "".join(f"{i}\tm\tf\t2012\t{i}\tn\tn\ta b{' c' * i}.\tc a.\t{i % 6}.0\n" for i in range(rows))
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text(header + lines)
