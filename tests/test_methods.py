"""Generic tests over every registered method (the rows of tests/methods_table.py): the table equals the
registry, paper defaults, one-line errors for bad hyperparameters, passes per step, seeds, exact resume,
the AdamW base, and the engine's smoke task. Hand computations live in the per-family files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from methods_table import COMBINATIONS, ROW_IDS, ROWS, MethodRow, expected_passes
from problems import STEPS_PER_EPOCH, BNNet, ce, indexed_batches, run_steps, sgd, tiny_run

from sampa import io
from sampa.config import ConfigError, RunConfig, validate
from sampa.optim import METHODS, HyperparameterError, build_method, check_method, method_class
from sampa.train import train

ERRORS = [
    pytest.param(row.name, hp, match, id=f"{row.name}-{sorted(hp)[0]}")
    for row in ROWS
    for hp, match in row.errors
]
CONFIGS = [pytest.param(row, config, id=f"{row.name}-{config}") for row in ROWS for config in row.configs]


def build(row: MethodRow, base=None, seed: int = 0, **overrides):
    """(model, method) on BNNet with the row's small-problem settings; the initialisation is fixed."""
    torch.manual_seed(0)
    model = BNNet()
    optimizer = sgd(model) if base is None else base(model)
    return model, build_method(row.name, model, ce, optimizer, seed=seed, **(row.hparams | overrides))


def run(method, steps: int, start: int = 0, epochs: int = 4) -> list:
    """Steps start..steps-1 of a run cycling over three indexed batches, STEPS_PER_EPOCH per epoch."""
    return run_steps(method, indexed_batches(), steps, start, epochs)


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def test_the_table_is_the_registry():
    assert sorted(set(ROW_IDS), key=ROW_IDS.index) == ROW_IDS  # no row twice
    assert set(ROW_IDS) == set(METHODS)


def test_every_registered_method_is_documented():
    docs = "".join(p.read_text() for p in (Path(__file__).parents[1] / "docs").glob("*.md"))
    missing = [name for name in METHODS if f"`{name}`" not in docs]
    assert not missing, f"registered methods not named in docs/*.md: {missing}"


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_display_name_and_paper_defaults(row):
    cls = method_class(row.name)
    assert cls.name == row.name and cls.display_name == row.display_name
    defaults = cls.Hparams()
    assert {key: getattr(defaults, key) for key in row.defaults} == row.defaults


@pytest.mark.parametrize(("combined", "variant"), COMBINATIONS)
def test_combinations_default_to_twice_the_variants_rho_and_sampa_0_2(combined, variant):
    """SAMPa App. B.4: "rho x 2 for SAMPa", other parameters at the variant's defaults."""
    ours, theirs = method_class(combined).Hparams(), method_class(variant).Hparams()
    assert ours.rho == 2 * theirs.rho and ours.lam == 0.2
    shared = set(vars(theirs)) - {"rho"}
    assert {k: getattr(ours, k) for k in shared} == {k: getattr(theirs, k) for k in shared}


@pytest.mark.parametrize(("name", "hp", "match"), ERRORS)
def test_bad_hyperparameters_are_one_line_errors(name, hp, match):
    with pytest.raises(HyperparameterError, match=match) as info:
        check_method(name, hp)
    assert "\n" not in str(info.value)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match=r"unknown optimizer 'samp'; choose one of: .*sampa.*sgd"):
        check_method("samp", {})


def test_bad_hyperparameters_stop_a_run_at_validation():
    with pytest.raises(ConfigError, match=r"theta must be in \(0, 1\] \(got 2\)"):
        validate(RunConfig(optimizer="vasso", hparams={"theta": 2}))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(("row", "config"), CONFIGS)
def test_valid_configurations_change_the_parameters(row, config):
    model, method = build(row, **config)
    before = flat(model.parameters())
    records = run(method, 2 * STEPS_PER_EPOCH)
    after = flat(model.parameters())
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert all(r.count == 16 and 0 <= int(r.correct) <= 16 for r in records)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_pass_counts_per_step(row):
    _, method = build(row)
    for t, r in enumerate(run(method, 4 * STEPS_PER_EPOCH)):
        counts = (r.forward, r.backward, r.sequential, r.ideal_sequential)
        assert counts == expected_passes(row, r, t, t // STEPS_PER_EPOCH), f"step {t}"


def seeded_run(row: MethodRow, seed: int, steps: int) -> tuple[torch.Tensor, list[dict[str, float]]]:
    model, method = build(row, seed=seed)
    records = run(method, steps, epochs=steps // STEPS_PER_EPOCH)
    return flat(model.parameters()), [{k: float(v) for k, v in r.stats.items()} for r in records]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_same_seed_same_run_and_only_random_methods_depend_on_the_seed(row):
    steps = 10 * STEPS_PER_EPOCH  # vSAM: several sampling windows after its warm-up epoch
    (params_a, stats_a), (params_b, stats_b) = (seeded_run(row, 5, steps) for _ in range(2))
    assert torch.equal(params_a, params_b) and stats_a == stats_b
    assert torch.equal(params_a, seeded_run(row, 6, steps)[0]) != row.random


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_state_dict_round_trip_continues_identically(row, tmp_path):
    total, cut = 4 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH
    model_a, method_a = build(row, seed=3)
    run(method_a, total)
    model_b, method_b = build(row, seed=3)
    run(method_b, cut)
    io.save_torch(tmp_path / "ckpt.pt", {"model": model_b.state_dict(), "method": method_b.state_dict()})
    ckpt = io.load_torch(tmp_path / "ckpt.pt")
    model_c, method_c = build(row, seed=3)
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    run(method_c, total, start=cut)
    assert torch.equal(flat(model_a.parameters()), flat(model_c.parameters()))
    assert torch.equal(model_a.bn.running_mean, model_c.bn.running_mean)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_adamw_base_alone_moves_the_parameters_and_training_progresses(row):
    """With AdamW as base, the parameters change only by AdamW's step with the method's direction G
    (replaying the captured directions through a fresh AdamW gives the same parameters), and the
    training loss falls."""
    adamw = lambda m: torch.optim.AdamW(m.parameters(), lr=2e-2, weight_decay=0.05)  # noqa: E731
    model, method = build(row, base=adamw)
    directions = []
    apply_update = method.apply_update

    def capture(direction):
        directions.append([g.clone() for g in direction])
        apply_update(direction)

    method.apply_update = capture
    replay = copy.deepcopy(model)
    records = run(method, 4 * STEPS_PER_EPOCH)
    replay_opt = adamw(replay)
    for direction in directions:
        for p, g in zip(replay.parameters(), direction, strict=True):
            p.grad = g
        replay_opt.step()
    torch.testing.assert_close(flat(model.parameters()), flat(replay.parameters()), rtol=1e-12, atol=1e-12)
    first, last = (sum(float(r.loss) for r in epoch) for epoch in (records[:3], records[-3:]))
    assert last < first


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_trains_the_synthetic_smoke_task_better_than_chance(row, tmp_path):
    """Through the engine (TinyCNN: its BatchNorms sit inside nn.Sequential, SAM-ON must find them); a
    method with fixed costs also logs its pass counts per epoch."""
    cfg = tiny_run(
        optimizer=row.name,
        hparams=row.smoke,
        epochs=4,
        batch_size=50,
        synthetic_train_size=1000,
        synthetic_test_size=200,
    )
    metrics = train(cfg, tmp_path / "run", log_progress=False)
    assert metrics["status"] == "complete" and not metrics["diverged"]
    assert metrics["test_acc"] > 0.2 and metrics["final_test_acc"] > 0.2  # chance is 0.1 (10 classes)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    if callable(row.passes) or row.name in ("msam", "sampa-msam"):  # decided per step, or per batch size
        return
    first, later = row.passes
    steps = rows[0]["steps"]
    for k, key in enumerate(("forward", "backward", "sequential", "ideal_sequential")):
        assert rows[0]["passes_per_step"][key] == pytest.approx((first[k] + later[k] * (steps - 1)) / steps)
        assert rows[-1]["passes_per_step"][key] == pytest.approx(later[k])
