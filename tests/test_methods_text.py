"""Every method on text batches: inputs as a mapping of tensors (``model(**inputs)``), as Hugging Face
models take them, follow exactly the same trajectory as the same model fed one packed tensor; the batch
helpers of ``sampa.batch`` slice, split and stack both kinds alike."""

from __future__ import annotations

import copy

import pytest
import torch
from methods_table import ROW_IDS, ROWS, MethodRow
from problems import STEPS_PER_EPOCH, PackedTinyText, TinyText, ce, packed, sgd, text_batches

from sampa import batch, io
from sampa.backends.fused import FusedExecutor
from sampa.optim import build_method

pytestmark = pytest.mark.usefixtures("float64")


def twins(row: MethodRow, executor=None) -> tuple:
    """(mapping model, its method), (packed model, its method): equal parameters, equal settings."""
    torch.manual_seed(0)
    text = TinyText()
    packed_model = PackedTinyText()
    packed_model.load_state_dict(text.state_dict())
    return tuple(
        (model, build_method(row.name, model, ce, sgd(model), seed=2, executor=executor, **row.hparams))
        for model in (text, packed_model)
    )


def run(method, data: list, steps: int, start: int = 0) -> list:
    records = []
    for t in range(start, steps):
        if t % STEPS_PER_EPOCH == 0:
            method.start_epoch(t // STEPS_PER_EPOCH, 4, STEPS_PER_EPOCH)
        inputs, targets = data[t % len(data)]
        indices = torch.arange(t % len(data) * 12, (t % len(data) + 1) * 12)
        records.append(method.step(inputs, targets, indices=indices))
    return records


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def counts(records: list) -> list[tuple]:
    return [(r.forward, r.backward, r.sequential, r.ideal_sequential, r.count) for r in records]


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_every_method_steps_on_mapping_batches_as_on_the_packed_tensor(row):
    data = text_batches()
    (text, method), (twin, twin_method) = twins(row)
    before = copy.deepcopy(text.state_dict())
    records = run(method, data, 4 * STEPS_PER_EPOCH)
    twin_records = run(twin_method, [(packed(x), y) for x, y in data], 4 * STEPS_PER_EPOCH)
    assert_same(text, twin)
    assert counts(records) == counts(twin_records)
    assert [float(r.loss) for r in records] == [float(r.loss) for r in twin_records]
    assert any(not torch.equal(before[k], v) for k, v in text.state_dict().items())


def test_fused_executor_stacks_mapping_batches():
    row = next(r for r in ROWS if r.name == "sampa")
    data = text_batches()
    (text, method), _ = twins(row, executor=FusedExecutor())
    (reference, reference_method), _ = twins(row)
    records = run(method, data, 6)
    run(reference_method, data, 6)
    assert records[-1].sequential == 1  # one fused pass: the mapping batches were stacked
    for a, b in zip(text.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sampa", "samdb"])
def test_resume_keeps_a_mapping_batch_in_the_method_state(name, tmp_path):
    row = next(r for r in ROWS if r.name == name)
    data = text_batches()
    (full, full_method), _ = twins(row)
    run(full_method, data, 6)
    (part, part_method), _ = twins(row)
    run(part_method, data, 3)
    io.save_torch(tmp_path / "ckpt.pt", {"model": part.state_dict(), "method": part_method.state_dict()})
    ckpt = io.load_torch(tmp_path / "ckpt.pt")
    (resumed, resumed_method), _ = twins(row)
    resumed.load_state_dict(ckpt["model"])
    resumed_method.load_state_dict(ckpt["method"])
    assert isinstance(resumed_method.prev_batch[0], dict)
    run(resumed_method, data, 6, start=3)
    assert_same(full, resumed)


def test_batch_helpers_treat_tensors_and_mappings_alike():
    inputs, _ = text_batches(1)[0]
    tensor = packed(inputs)
    assert batch.batch_size(inputs) == batch.batch_size(tensor) == 12
    index = torch.tensor([3, 0, 7])
    assert torch.equal(packed(batch.select(inputs, index)), batch.select(tensor, index))
    parts = batch.split(inputs, 5)
    assert [batch.batch_size(p) for p in parts] == [3, 3, 2, 2, 2]
    assert all(torch.equal(packed(p), q) for p, q in zip(parts, batch.split(tensor, 5), strict=True))
    assert torch.equal(packed(batch.stack([inputs, inputs]))[1], tensor)
    assert batch.signature(inputs) != batch.signature(parts[0])
    assert batch.device_of(inputs) == torch.device("cpu")
    assert batch.to_device(inputs, "cpu").keys() == inputs.keys()


@pytest.mark.parametrize("bad", [[1, 2], {}, {"input_ids": [1, 2]}])
def test_batch_helpers_refuse_other_inputs_in_one_line(bad):
    with pytest.raises(
        TypeError, match="batch inputs must be a tensor or a non-empty mapping of tensors"
    ) as info:
        batch.batch_size(bad)
    assert "\n" not in str(info.value)
