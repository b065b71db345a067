"""GLUE tasks (real TSV and parquet layouts, tiny files), their metrics, text batches and a tiny BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sampa.data.cifar import DataUnavailableError
from sampa.data.glue import (
    TextSplit,
    read_glue,
    synthetic_text,
    synthetic_text_data,
    text_batches,
    tokenize,
)
from sampa.glue_tasks import GLUE_TASKS, TASK_NAMES, glue_task
from sampa.metrics.scores import (
    GLUE_METRICS,
    average_ranks,
    evaluate_text,
    f1_binary,
    glue_average,
    glue_scores,
    matthews_corrcoef,
    spearman,
    task_metric_names,
    task_score,
)

transformers = pytest.importorskip("transformers")  # the nlp extra (models and tokenizer below)
from sampa.models.bert import BertClassifier, WeightsUnavailableError, bert_base, bert_tiny  # noqa: E402
from sampa.optim import build_method  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Metrics


def test_matthews_and_f1_on_a_hand_computed_example():
    pred = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    labels = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1])  # tp 3, fp 1, fn 1, tn 3
    assert matthews_corrcoef(pred, labels) == pytest.approx((9 - 1) / 16)
    assert f1_binary(pred, labels) == pytest.approx(6 / 8)
    assert matthews_corrcoef(torch.ones(4), torch.tensor([1, 0, 1, 0])) == 0.0  # undefined -> 0


def test_spearman_uses_average_ranks_for_ties():
    assert average_ranks(torch.tensor([10.0, 20.0, 10.0, 5.0])).tolist() == [2.5, 4.0, 2.5, 1.0]
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 4.0, 9.0, 16.0])) == pytest.approx(
        1.0
    )
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 5, (50,), generator=gen).double(), torch.randn(50, generator=gen)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic)


def test_glue_scores_per_task():
    pred, labels = torch.tensor([1, 0, 1, 1]), torch.tensor([1, 0, 0, 1])
    assert glue_scores("mrpc", pred, labels) == pytest.approx({"acc": 0.75, "f1": 0.8})
    assert set(glue_scores("stsb", pred.double(), labels.double())) == {"pearson", "spearman"}
    with pytest.raises(ValueError, match="unknown GLUE task 'glue'; choose one of: cola, sst2"):
        glue_scores("glue", pred, labels)


class FixedOutputs(torch.nn.Module):
    """Returns row ``input_ids[i, 0]`` of a fixed output table: a model whose predictions are chosen."""

    def __init__(self, outputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.outputs[input_ids[:, 0]]


def _scored(task: str | None, outputs: torch.Tensor, labels: torch.Tensor) -> dict:
    tokens = {"input_ids": torch.arange(len(labels))[:, None], "attention_mask": torch.ones(len(labels), 1)}
    batches = [({k: v[:2] for k, v in tokens.items()}, labels[:2], torch.arange(2)),
               ({k: v[2:] for k, v in tokens.items()}, labels[2:], torch.arange(2, len(labels)))]  # fmt: skip
    return evaluate_text(FixedOutputs(outputs), batches, task)


# predictions 1 0 1 1 against labels 1 0 0 1: tp 2, tn 1, fp 1, fn 0
BINARY_LOGITS = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
BINARY_LABELS = torch.tensor([1, 0, 0, 1])
BINARY_SCORES = {  # by hand: acc 3/4; F1 2tp/(2tp+fp+fn) = 4/5; MCC (2*1 - 1*0)/sqrt(3*2*2*1)
    "cola": {"acc": 0.75, "mcc": 2 / 12**0.5, "task_score": 2 / 12**0.5},
    "sst2": {"acc": 0.75, "task_score": 0.75},
    "mrpc": {"acc": 0.75, "f1": 0.8, "task_score": 0.775},
    "qqp": {"acc": 0.75, "f1": 0.8, "task_score": 0.775},
    "rte": {"acc": 0.75, "task_score": 0.75},
    None: {"acc": 0.75, "task_score": 0.75},  # a plain classification task (synthetic text)
}


@pytest.mark.parametrize("task", list(BINARY_SCORES))
def test_evaluate_text_records_accuracy_the_task_metrics_and_their_mean(task):
    out = _scored(task, BINARY_LOGITS, BINARY_LABELS)
    assert set(out) == {"loss", "acc", "task_score", *task_metric_names(task)}
    want = BINARY_SCORES[task]
    assert {k: out[k] for k in want} == pytest.approx(want)
    assert out["loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(BINARY_LOGITS, BINARY_LABELS))
    )


def test_evaluate_text_three_classes_and_regression():
    mnli = _scored("mnli", torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 0]))
    assert mnli["acc"] == mnli["task_score"] == 0.75
    stsb = _scored("stsb", torch.tensor([[1.0], [2.0], [4.0], [3.0]]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert set(stsb) == {"loss", "acc", "pearson", "spearman", "task_score"} and stsb["acc"] is None
    # by hand: deviations (-1.5, -0.5, 1.5, 0.5) and (-1.5, -0.5, 0.5, 1.5): 4.0 / 5.0; ranks 1 2 4 3
    assert stsb["pearson"] == pytest.approx(0.8) and stsb["spearman"] == pytest.approx(0.8)
    assert stsb["task_score"] == pytest.approx(0.8) and stsb["loss"] == pytest.approx(0.5)


def test_task_score_is_the_mean_of_the_tasks_metrics():
    assert task_score("mrpc", {"acc": 0.856, "f1": 0.899, "mcc": 0.0}) == pytest.approx(0.8775)
    assert task_score("stsb", {"pearson": 0.854, "spearman": 0.853}) == pytest.approx(0.8535)
    assert task_score(None, {"acc": 0.5}) == 0.5
    with pytest.raises(ValueError, match="unknown GLUE task 'mnli-mm'; choose one of: cola"):
        task_metric_names("mnli-mm")


def test_glue_average_reproduces_the_papers_adamw_score():
    row = {  # Table 6, AdamW, in percent
        "cola": {"mcc": 56.6}, "sst2": {"acc": 91.6}, "mrpc": {"acc": 85.6, "f1": 89.9},
        "stsb": {"pearson": 85.4, "spearman": 85.3}, "qqp": {"acc": 90.2, "f1": 86.8}, "mnli": {"acc": 82.6},
        "qnli": {"acc": 89.8}, "rte": {"acc": 62.4}, "wnli": {"acc": 26.4},
    }  # fmt: skip
    assert round(glue_average(row), 1) == 74.6
    del row["wnli"]
    with pytest.raises(ValueError, match="missing: wnli"):
        glue_average(row)


def test_task_table_matches_the_papers_settings():
    assert tuple(GLUE_METRICS) == TASK_NAMES
    assert {t: GLUE_TASKS[t].rho for t in TASK_NAMES if GLUE_TASKS[t].rho != 0.05} == {
        "cola": 0.01,
        "rte": 0.005,
        "stsb": 0.005,
    }
    assert {t for t in TASK_NAMES if GLUE_TASKS[t].epochs == 5} == {"mrpc", "wnli"}
    assert [t for t in TASK_NAMES if GLUE_TASKS[t].regression] == ["stsb"]
    assert GLUE_METRICS["mrpc"] == ("acc", "f1") and GLUE_METRICS["cola"] == ("mcc",)


def test_planning_and_reporting_name_the_tasks_from_the_one_table():
    """Display names, training-set sizes and metrics of the GLUE datasets come from sampa.glue_tasks."""
    from sampa.data.sources import TRAIN_SIZES
    from sampa.experiments import DATASET_DISPLAY
    from sampa.report.metrics import applies

    for task in GLUE_TASKS.values():
        assert DATASET_DISPLAY[task.dataset] == task.display
        assert TRAIN_SIZES[task.dataset] == task.train_size
        assert applies(f"glue_{task.metrics[0]}", task.dataset)
    assert (DATASET_DISPLAY["glue-stsb"], TRAIN_SIZES["glue-rte"]) == ("STS-B", 2_490)
    assert not applies("glue_mcc", "glue-mrpc") and applies("glue_mcc", "glue-cola")


# ----------------------------------------------------------------------------------------------
# Reading the on-disk layouts

# Each task's TSV in the GLUE download's column layout (two rows per file).
TSV = {
    "CoLA": "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n",
    "SST-2": "sentence\tlabel\nit 's a charming journey \t1\nunfunny \t0\n",
    "MRPC": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said so .\tHe told us .\n"
    "0\t3\t4\tA cat .\tThe market fell .\n",
    "STS-B": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    "0\tmain\tf\t2012\t1\tnone\tnone\tA plane takes off.\tAn air plane is taking off.\t5.000\n"
    "1\tmain\tf\t2012\t4\tnone\tnone\tA man plays.\tA woman eats.\t0.500\n",
    "QQP": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t1\t2\tWhy?\tWhy not?\t0\n"
    "2\t3\t4\tHow?\tHow so?\t1\n",
    "MNLI": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    "0\t1\t1n\tgov\t(\t(\t(\t(\tIt rains.\tIt is wet.\tentailment\tentailment\n"
    '1\t2\t2c\tgov\t(\t(\t(\t(\tIt rains.\tIt is "dry".\tcontradiction\tcontradiction\n',
    "QNLI": "index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n"
    "1\tWhen?\tBlue.\tnot_entailment\n",
    "RTE": "index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n1\tC d.\tE.\tnot_entailment\n",
    "WNLI": "index\tsentence1\tsentence2\tlabel\n0\tI saw it.\tIt was seen.\t1\n1\tX.\tY.\t0\n",
}
EXPECTED = {
    "cola": ([["Our friends won't buy this analysis.", "They drank the pub."]], [1, 0]),
    "sst2": ([["it 's a charming journey ", "unfunny "]], [1, 0]),
    "mrpc": ([["He said so .", "A cat ."], ["He told us .", "The market fell ."]], [1, 0]),
    "stsb": (
        [["A plane takes off.", "A man plays."], ["An air plane is taking off.", "A woman eats."]],
        [5, 0.5],
    ),
    "qqp": ([["Why?", "How?"], ["Why not?", "How so?"]], [0, 1]),
    "mnli": ([["It rains.", "It rains."], ["It is wet.", 'It is "dry".']], [0, 2]),
    "qnli": ([["Who?", "When?"], ["He did.", "Blue."]], [0, 1]),
    "rte": ([["A b.", "C d."], ["A.", "E."]], [0, 1]),
    "wnli": ([["I saw it.", "X."], ["It was seen.", "Y."]], [1, 0]),
}


@pytest.fixture
def glue_tsvs(tmp_path: Path) -> Path:
    for task in GLUE_TASKS.values():
        folder = tmp_path / "glue" / task.tsv.folder
        folder.mkdir(parents=True)
        for name in ("train.tsv", task.tsv.dev_file):
            (folder / name).write_text(TSV[task.tsv.folder])
    return tmp_path


@pytest.mark.parametrize("task", TASK_NAMES)
def test_reads_every_tasks_glue_tsv(glue_tsvs, task):
    texts, labels = EXPECTED[task]
    for split in ("train", "eval"):
        raw = read_glue(task, split, glue_tsvs)
        assert raw.texts == texts and raw.labels == labels


def test_reads_the_hub_parquet_layout(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    folder = tmp_path / "glue" / "mnli"
    folder.mkdir(parents=True)
    table = pd.DataFrame(
        {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, 1], "idx": [0, 1]}
    )
    table.to_parquet(folder / "validation_matched-00000-of-00001.parquet")
    raw = read_glue("mnli", "eval", tmp_path)
    assert raw.texts == [["p1", "p2"], ["h1", "h2"]] and raw.labels == [2.0, 1.0]


def test_missing_task_names_what_to_put_where(tmp_path):
    with pytest.raises(
        DataUnavailableError, match=r"GLUE RTE not found: put the GLUE TSVs at .*glue/RTE/dev.tsv"
    ):
        read_glue("rte", "eval", tmp_path)
    with pytest.raises(ValueError, match="unknown GLUE task 'mnli-mm'"):
        glue_task("mnli-mm")


def test_bad_label_is_a_one_line_error(tmp_path):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataUnavailableError, match="label 'maybe' is not one of entailment, not_entailment"):
        read_glue("rte", "train", tmp_path)


# ----------------------------------------------------------------------------------------------
# Tokenising and batching


@pytest.fixture
def tokenizer(tmp_path: Path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "cat", "sat", "."]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    return transformers.BertTokenizerFast(str(vocab), do_lower_case=True)  # v4: vocab_file, v5: vocab


def test_tokenize_pairs_pads_to_the_longest(glue_tsvs, tokenizer):
    raw = read_glue("rte", "train", glue_tsvs)  # ("A b.", "A."), ("C d.", "E.")
    split = tokenize(tokenizer, raw, regression=False)
    assert split.tokens["input_ids"].tolist() == [[2, 5, 6, 10, 3, 5, 10, 3], [2, 7, 1, 10, 3, 1, 10, 3]]
    assert split.tokens["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert split.labels.tolist() == [0, 1] and split.labels.dtype == torch.int64
    stsb = tokenize(tokenizer, read_glue("stsb", "train", glue_tsvs), regression=True, max_length=6)
    assert stsb.labels.dtype == torch.float32 and stsb.tokens["input_ids"].shape == (2, 6)  # truncated


def test_text_batches_cover_the_split_in_a_seeded_order():
    split = synthetic_text(10, seed=1)
    batches = list(text_batches(split, 4, seed=5, epoch=2))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    indices = torch.cat([b[2] for b in batches])
    assert sorted(indices.tolist()) == list(range(10))
    inputs, labels, idx = batches[0]
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == torch.int64 for v in inputs.values())
    assert torch.equal(inputs["input_ids"], split.tokens["input_ids"][idx].long())
    assert torch.equal(labels, split.labels[idx])
    again = torch.cat([b[2] for b in text_batches(split, 4, seed=5, epoch=2)])
    other = torch.cat([b[2] for b in text_batches(split, 4, seed=5, epoch=3)])
    assert torch.equal(indices, again) and not torch.equal(indices, other)
    assert torch.cat([b[2] for b in text_batches(split, 4)]).tolist() == list(range(10))  # eval: in order


def test_text_data_batches_its_two_splits():
    data = synthetic_text_data(num_labels=3, train_size=20, eval_size=8)
    assert (data.name, data.num_labels, len(data.train), len(data.eval)) == ("synthetic-text", 3, 20, 8)
    train = [b[2] for b in data.train_batches(8, seed=1, epoch=0)]
    expected = [b[2] for b in text_batches(data.train, 8, seed=1, epoch=0)]
    assert all(torch.equal(a, b) for a, b in zip(train, expected, strict=True))
    assert torch.cat([b[2] for b in data.eval_batches(8)]).tolist() == list(range(8))
    assert not torch.equal(data.train.tokens["input_ids"][:8], data.eval.tokens["input_ids"])


def test_synthetic_text_holds_its_label_marker():
    split = synthetic_text(50, num_labels=3, vocab_size=20, length=8, seed=0)
    ids, mask = split.tokens["input_ids"], split.tokens["attention_mask"].bool()
    assert (ids[:, 0] == 1).all()
    for row, label, m in zip(ids, split.labels, mask, strict=True):
        used = row[m]
        assert used[-1] == 2 and (row[~m] == 0).all()
        assert (used == 3 + label).sum() == 1 and ((used >= 3) & (used < 6)).sum() == 1
    with pytest.raises(ValueError, match="need vocab_size >= 7"):
        synthetic_text(5, num_labels=3, vocab_size=6)


def test_synthetic_text_label_noise_replaces_a_tenth_of_the_labels_by_another_class():
    """The smoke Table 6 task: the marker gives the label, except for the replaced 10 % (so about 90 % is
    attainable); the majority class stays near 1/4."""
    split = synthetic_text(2000, num_labels=4, label_noise=0.1, seed=0)
    ids = split.tokens["input_ids"].long()
    marker = ((ids >= 3) & (ids < 7)).long().argmax(1)  # one marker token per row
    true_class = ids.gather(1, marker[:, None])[:, 0] - 3
    assert set(split.labels.tolist()) == {0, 1, 2, 3}
    assert 0.08 < (split.labels != true_class).float().mean() < 0.12
    assert split.labels.bincount().max() / len(split) < 0.3
    clean = synthetic_text(2000, num_labels=4, seed=0)  # the noise changes labels only
    assert torch.equal(clean.tokens["input_ids"], split.tokens["input_ids"])
    assert torch.equal(clean.labels, true_class)
    with pytest.raises(ValueError, match="0 <= label_noise < 1"):
        synthetic_text(5, label_noise=1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoke_table6_adamw_run_learns_the_task_but_not_to_100_percent(tmp_path, one_thread, seed):
    """The smoke profile's Table 6 AdamW run (its planned settings) on seeds where a width-32 bert-tiny
    without warm-up stayed on a plateau (1: 48 %, 2: 45 %): near the 89.8 % ceiling, below 100 % (the
    eval labels are noisy)."""
    from sampa import experiments as ex
    from sampa.config import config_from_dict, validate
    from sampa.train import train

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    run = next(r for r in ex.plan(ex.load_config(smoke)).runs["table6"] if r.cell["arm"] == "AdamW")
    cfg = validate(config_from_dict({**run.settings, "seed": seed, "device": "cpu", "threads": 1}))
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert 0.85 < metrics["test_acc"] < 1.0, metrics["test_acc"]


def test_text_split_rejects_mismatched_shapes():
    tokens = {
        k: torch.zeros(3, 4, dtype=torch.int32) for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    with pytest.raises(ValueError, match="one shape"):
        TextSplit(tokens, torch.zeros(2, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------
# BERT


@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_bert_takes_a_batch_mapping_and_ignores_padding():
    torch.manual_seed(0)
    model = bert_tiny(num_labels=3).eval()
    split = synthetic_text(4, length=12, seed=0)
    inputs, _, _ = next(text_batches(split, 4))
    logits = model(**inputs)
    assert logits.shape == (4, 3)
    assert torch.equal(model(inputs), logits)  # the mapping itself works too
    padded = {k: torch.nn.functional.pad(v, (0, 5)) for k, v in inputs.items()}  # 5 more pad tokens
    assert torch.allclose(model(**padded), logits, atol=1e-5)


def test_bert_base_loads_a_local_directory(tmp_path):
    torch.manual_seed(0)
    source = bert_tiny(num_labels=2)
    source.bert.save_pretrained(tmp_path / "bert")
    loaded = bert_base(num_labels=3, weights=tmp_path / "bert")
    assert isinstance(loaded, BertClassifier) and loaded.bert.config.num_labels == 3
    a, b = source.bert.bert.state_dict(), loaded.bert.bert.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # encoder and pooler: pretrained; classifier: new
    with pytest.raises(WeightsUnavailableError, match=r"no config.json in .*nowhere"):
        bert_base(2, weights=tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("method", "hparams"), [("sam", {"rho": 0.05}), ("sampa", {"rho": 0.05, "lam": 0.1})]
)
def test_methods_fine_tune_tiny_bert_on_text_batches(method, hparams, one_thread):
    torch.manual_seed(0)
    model = bert_tiny(num_labels=2, max_length=16)
    train, test = synthetic_text(128, length=12, seed=0), synthetic_text(64, length=12, seed=1)
    loss = lambda logits, y: torch.nn.functional.cross_entropy(logits, y, reduction="none")  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = build_method(method, model, loss, opt, **hparams)
    before = evaluate_text(model, text_batches(test, 64), None)
    for epoch in range(3):
        for inputs, labels, _ in text_batches(train, 32, seed=0, epoch=epoch):
            step.step(inputs, labels)
    after = evaluate_text(model, text_batches(test, 64), None)
    assert after["loss"] < before["loss"] and after["acc"] >= 0.9


def test_evaluate_text_regression_scores_stsb():
    class Echo(torch.nn.Module):  # predicts the first token id as the similarity score
        def forward(self, input_ids, attention_mask):
            return input_ids[:, :1].float()

    tokens = {"input_ids": torch.tensor([[1], [2], [4]]), "attention_mask": torch.ones(3, 1)}
    labels = torch.tensor([1.0, 2.0, 3.0])
    out = evaluate_text(Echo(), [(tokens, labels, torch.arange(3))], "stsb")
    assert out["loss"] == pytest.approx(1 / 3) and out["spearman"] == pytest.approx(1.0)
    assert out["pearson"] == pytest.approx(0.9819805, rel=1e-6)
