"""The public Python API as a researcher uses it in a training loop of their own (README "Use it in your
own training loop", docs/methods.md, the docstrings): the README's code runs as written, every method
builds with its defaults on SGD and AdamW, misuse is a one-line error before any work (or works and is
documented), and the package surface names the contract."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from methods_table import ROW_IDS, ROWS
from problems import STEPS_PER_EPOCH, BNNet, ce, indexed_batches, run_steps

from sampa import io
from sampa.losses import make_loss
from sampa.optim import METHOD_CLASSES, METHOD_NAMES, METHODS, HyperparameterError, build_method
from sampa.optim.lookahead import lookahead

README = Path(__file__).parents[1] / "README.md"


def readme_loop_code() -> list[str]:
    """The Python blocks of README's section "Use it in your own training loop", in order."""
    text = README.read_text()
    section = text.split("## Use it in your own training loop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_training_loop_runs_as_written_and_resumes(tmp_path, monkeypatch, capsys):
    """README's code, run as written: only the loader ("any sized iterable of (images, labels) batches") is
    ours, and the epochs are 2 of its 200 (any number runs the same code)."""
    train, resume = readme_loop_code()
    assert train.count("epochs = 200\n") == 1
    train = train.replace("epochs = 200\n", "epochs = 2\n")
    gen = torch.Generator().manual_seed(0)
    loader = [
        (torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen))
        for _ in range(2)
    ]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"loader": loader}
    exec(compile(train, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["0", "1"]
    forward = [int(line.split()[3]) for line in printed]
    assert forward == [2, 2]  # SAMPa: 2 forward passes from the second step on
    assert namespace["method"].step_count == 4 and (tmp_path / "checkpoint.pt").exists()
    resumed: dict = {"loader": loader}
    torch.manual_seed(1)  # another initialisation: the resume block restores everything
    exec(compile(train.split("\nfor epoch")[0], "README.md", "exec"), resumed)  # "building the same ..."
    exec(compile(resume, "README.md", "exec"), resumed)
    for ns in (namespace, resumed):  # one more step each: the resumed run continues identically
        ns["model"].train()
        ns["method"].step(*loader[0])
    assert resumed["method"].step_count == 5 and resumed["scheduler"].last_epoch == 2
    pairs = zip(namespace["model"].state_dict().values(), resumed["model"].state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("smoothing", [1.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_make_loss_rejects_smoothing_outside_zero_one(smoothing):
    with pytest.raises(ValueError, match=r"label smoothing must be a number in \[0, 1\) \(got "):
        make_loss(smoothing)


def test_make_loss_accepts_its_range():
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    assert make_loss(0)(logits, y).shape == (5,) and make_loss(0.99)(logits, y).shape == (5,)


@pytest.mark.parametrize(
    ("hp", "match"),
    [
        ({"rho": float("inf")}, r"rho must be a finite number \(got inf\)"),
        ({"lam": float("-inf")}, r"lam must be a finite number \(got -inf\)"),
        ({"rho": "0.1"}, r"rho must be a finite number \(got '0.1'\)"),
    ],
)
def test_non_finite_hyperparameters_are_errors(hp, match):
    model = BNNet()
    with pytest.raises(HyperparameterError, match=match):
        build_method("sampa", model, ce, sgd(model), **hp)


def test_arguments_of_the_wrong_kind_are_one_line_errors():
    model = BNNet()
    opt = sgd(model)
    cases = [
        ((opt, ce, model), r"model must be a torch.nn.Module \(got SGD\)"),
        ((model, ce, model.parameters()), r"base_optimizer must be a torch.optim.Optimizer \(got gen"),
        ((model, 0.1, opt), r"loss_fn must be callable as loss_fn\(logits, targets\).*\(got float\)"),
    ]
    for args, match in cases:
        with pytest.raises(TypeError, match=match) as info:
            build_method("sam", *args)
        assert "\n" not in str(info.value)


def batch(size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(size, 4, generator=gen), torch.randint(0, 3, (size,), generator=gen)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["sgd", "sam", "sampa"])
def test_a_scalar_loss_is_an_error_naming_the_fix(name, reduction):
    """A mean and a sum are both scalars: the sum would silently scale every step by the batch size."""
    model = BNNet()
    method = build_method(name, model, torch.nn.CrossEntropyLoss(reduction=reduction), sgd(model))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per sample, shape \(16,\)"):
        method.step(*batch())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_eval_mode_during_step_is_an_error():
    model = BNNet()
    method = build_method("sam", model, ce, sgd(model))
    model.eval()
    with pytest.raises(RuntimeError, match=r"the model is in eval mode: call model.train\(\) before"):
        method.step(*batch())
    model.train()
    model.bn.eval()  # BatchNorm frozen on purpose (fine-tuning): allowed, running statistics unchanged
    stats = model.bn.running_mean.clone()
    method.step(*batch())
    assert torch.equal(stats, model.bn.running_mean)


def test_a_batch_on_another_device_or_of_another_size_is_an_error():
    model = BNNet()
    method = build_method("sampa", model, ce, sgd(model))
    x, y = batch()
    with pytest.raises(ValueError, match=r"inputs are on meta but the model's parameters on cpu: move"):
        method.step(x.to("meta"), y)
    with pytest.raises(ValueError, match=r"targets are on meta but the model's parameters on cpu"):
        method.step(x, y.to("meta"))
    with pytest.raises(ValueError, match=r"the batch has 16 inputs but targets of shape \(8,\)"):
        method.step(x, y[:8])


def adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_state_dict_round_trip_with_adamw_continues_identically(row, tmp_path):
    """tests/test_methods.py resumes every method on SGD; AdamW's state (step counts, moments) too."""

    def build():
        torch.manual_seed(0)
        model = BNNet()
        return model, build_method(row.name, model, ce, adamw(model), seed=3, **row.hparams)

    data, total, cut = indexed_batches(), 4 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH
    model_a, method_a = build()
    run_steps(method_a, data, total)
    model_b, method_b = build()
    run_steps(method_b, data, cut)
    io.save_torch(tmp_path / "ckpt.pt", {"model": model_b.state_dict(), "method": method_b.state_dict()})
    ckpt = io.load_torch(tmp_path / "ckpt.pt")
    model_c, method_c = build()
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    run_steps(method_c, data, total, start=cut)
    pairs = zip(model_a.state_dict().values(), model_c.state_dict().values(), strict=True)
    assert all(torch.equal(a, c) for a, c in pairs)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_loading_another_methods_state_is_an_error(name):
    other = "sam" if name != "sam" else "sampa"
    model = BNNet()
    saved = build_method(other, model, ce, sgd(model)).state_dict()
    method = build_method(name, model, ce, sgd(model))
    with pytest.raises(
        ValueError, match=f"this state was saved by method '{other}'; it cannot be loaded into"
    ):
        method.load_state_dict(saved)
    with pytest.raises(
        ValueError, match=r"not a method state \(from method.state_dict\(\)\): no key 'method'"
    ):
        method.load_state_dict({"base_optimizer": sgd(model).state_dict()})


def test_a_state_saved_before_the_name_was_recorded_still_loads():
    model = BNNet()
    method = build_method("sampa", model, ce, sgd(model))
    run_steps(method, indexed_batches(), 2)
    state = method.state_dict()
    assert state.pop("name") == "sampa"
    resumed = build_method("sampa", model, ce, sgd(model))
    resumed.load_state_dict(state)
    assert resumed.step_count == 2 and resumed.g_y is not None


# ----------------------------------------------------------------------------------------------
# The package surface and the documented defaults

DOCS = Path(__file__).parents[1] / "docs" / "methods.md"
SYMBOLS = {"ρ": "rho", "λ": "lam", "η": "eta", "θ": "theta", "μ": "mu", "α": "alpha"}


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """Rows of the Markdown table under the line starting with ``header``: first cell's `name` -> cells."""
    lines = text.split(header, 1)[1].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def test_the_docs_table_of_defaults_is_the_code():
    rows = table_rows(DOCS.read_text(), "| name | display | keyword arguments (defaults) |")
    assert list(rows) == [cls.name for cls in METHOD_CLASSES]
    for cls in METHOD_CLASSES:
        documented = dict(re.findall(r"`(\w+)=([^`]+)`", rows[cls.name][2]))
        code = {key: repr(value) for key, value in dataclasses.asdict(cls.Hparams()).items()}
        assert documented == code, cls.name
        assert rows[cls.name][1] == cls.display_name


@pytest.mark.parametrize(
    ("path", "header", "column"),
    [(README, "| name | method | passes / step |", 4), (DOCS, "| registry | display | defaults |", 2)],
)
def test_defaults_written_with_symbols_are_the_code(path, header, column):
    """README's method table and the baselines table of docs/methods.md write defaults as ρ = 0.05."""
    rows = table_rows(path.read_text(), header)
    assert len(rows) >= 5
    for name, cells in rows.items():
        defaults = METHODS[name].Hparams()
        written = re.findall(r"([ρληθμα])\s*=\s*([-\d.]+)", cells[column])
        assert written or cells[column] == "–", name
        assert {SYMBOLS[s]: float(v) for s, v in written} == {
            SYMBOLS[s]: getattr(defaults, SYMBOLS[s]) for s, _ in written
        }, name


def test_every_method_class_and_the_contract_are_exported():
    import sampa.optim

    exported = set(sampa.optim.__all__)
    assert {cls.__name__ for cls in METHOD_CLASSES} <= exported
    assert {"build_method", "Method", "StepRecord", "LossFn", "HyperparameterError"} <= exported
    assert all(hasattr(sampa.optim, name) for name in exported)


def test_importing_the_api_is_cheap():
    """``import sampa`` loads nothing; the API modules of README's loop load torch and nothing heavy."""
    heavy = ["torch", "pandas", "matplotlib", "snakemake", "yaml", "jsonschema", "torchvision"]
    heavy += ["transformers", "timm", "scipy", "torch._dynamo", "sampa.train", "sampa.config", "sampa.data"]
    code = (
        "import sys; import sampa; first = [m for m in HEAVY if m in sys.modules]; "
        "import sampa.optim, sampa.losses, sampa.models; print(first, [m for m in HEAVY if m in sys.modules])"
    ).replace("HEAVY", repr(heavy))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] ['torch']", out.stderr


# ----------------------------------------------------------------------------------------------
# Fine-tuning: frozen layers, parameter groups, schedulers


@pytest.mark.parametrize("name", ["sam", "sampa", "asam"])
@pytest.mark.parametrize("in_optimizer", [True, False])
def test_frozen_layers_stay_put_whether_or_not_the_optimizer_holds_them(name, in_optimizer):
    torch.manual_seed(0)
    model = BNNet()
    model.fc1.requires_grad_(False)
    params = model.parameters() if in_optimizer else [p for p in model.parameters() if p.requires_grad]
    method = build_method(name, model, ce, torch.optim.SGD(params, lr=0.1, momentum=0.9))
    frozen, head = model.fc1.weight.clone(), model.fc2.weight.clone()
    run_steps(method, indexed_batches(), 3)
    assert torch.equal(frozen, model.fc1.weight) and not torch.equal(head, model.fc2.weight)
    assert method.param_names == ["bn.weight", "bn.bias", "fc2.weight", "fc2.bias"]


@pytest.mark.parametrize("change", ["unfreeze", "freeze", "add_group"])
def test_changing_the_trainable_parameters_after_building_is_an_error(change):
    """Unfreezing would otherwise silently leave the layer frozen (the method's parameters are fixed)."""
    model = BNNet()
    model.fc1.requires_grad_(False)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("bn")], lr=0.1)
    method = build_method("sampa", model, ce, opt)
    method.step(*batch())
    if change == "unfreeze":
        model.fc1.requires_grad_(True)
    elif change == "freeze":
        model.fc2.bias.requires_grad_(False)
    else:
        opt.add_param_group({"params": list(model.bn.parameters())})
    with pytest.raises(RuntimeError, match="trainable parameters changed since the method was built"):
        method.step(*batch())
    if change == "add_group":
        return
    method = build_method("sampa", model, ce, opt)  # built again: fine
    method.step(*batch())


def test_parameter_groups_keep_their_own_learning_rate_and_weight_decay():
    """SGD as the method equals torch's own loop over the same groups; SAMPa's look-ahead honours them."""

    def groups(model: BNNet) -> list[dict]:
        return [
            {"params": list(model.fc1.parameters()), "lr": 0.0},
            {"params": list(model.bn.parameters()), "weight_decay": 0.0},
            {"params": list(model.fc2.parameters()), "lr": 0.3, "weight_decay": 0.01},
        ]

    torch.manual_seed(0)
    model = BNNet()
    reference = copy.deepcopy(model)
    method = build_method("sgd", model, ce, torch.optim.SGD(groups(model), lr=0.1, momentum=0.9))
    opt = torch.optim.SGD(groups(reference), lr=0.1, momentum=0.9)
    for x, y, _ in indexed_batches():
        method.step(x, y)
        opt.zero_grad()
        ce(reference(x), y).mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    sampa = build_method("sampa", model, ce, torch.optim.SGD(groups(model), lr=0.1, momentum=0.9))
    frozen = model.fc1.weight.clone()
    run_steps(sampa, indexed_batches(), 4)
    assert torch.equal(frozen, model.fc1.weight)  # lr 0: SAMPa's y and its steps keep the group's lr


def test_a_scheduler_on_the_base_optimizer_drives_every_step():
    """SGD as the method under StepLR equals torch's own loop under the same scheduler."""
    torch.manual_seed(0)
    model = BNNet()
    reference = copy.deepcopy(model)
    base, opt = sgd(model), sgd(reference)
    method = build_method("sgd", model, ce, base)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (base, opt)]
    for x, y, _ in indexed_batches() * 2:
        method.step(x, y)
        opt.zero_grad()
        ce(reference(x), y).mean().backward()
        opt.step()
        for scheduler in schedulers:
            scheduler.step()
    assert base.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.1 * 0.5**6
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", [torch.optim.SGD, torch.optim.AdamW])
def test_the_lookahead_of_sampa_honours_parameter_groups(kind):
    """y_{t+1} = the step the base optimizer would take: with groups of their own lr and weight decay."""
    model = BNNet()
    groups = [
        {"params": list(model.fc1.parameters()), "lr": 0.3, "weight_decay": 0.1},
        {"params": list(model.fc2.parameters())},
    ]
    extra = {"momentum": 0.9} if kind is torch.optim.SGD else {}
    opt = kind(groups, lr=0.01, weight_decay=0.0, **extra)
    params = [*model.fc1.parameters(), *model.fc2.parameters()]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        predicted = lookahead(opt, params, grads)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        for p, y in zip(params, predicted, strict=True):
            torch.testing.assert_close(p.detach(), y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("base", [sgd, adamw], ids=["sgd", "adamw"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_trains_with_its_defaults(name, base):
    """As a researcher first tries it: defaults, a small model, SGD or AdamW; the loss falls."""
    torch.manual_seed(0)
    model = BNNet()
    method = build_method(name, model, ce, base(model))
    data = indexed_batches(1, size=32)
    records = run_steps(method, data, 12, epochs=4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert float(records[-1].loss) < float(records[0].loss)


def test_a_base_optimizer_over_another_models_parameters_is_an_error():
    model, other = BNNet(), BNNet()
    with pytest.raises(ValueError, match=r"holds a tensor of shape \(6, 4\) that is not a parameter of the"):
        build_method("sam", model, ce, sgd(other))


def test_a_data_parallel_wrapper_is_an_error(tmp_path):
    """DDP does not all-reduce gradients from torch.autograd.grad: each replica would silently train alone."""
    import torch.distributed as dist

    model = BNNet()
    with pytest.raises(TypeError, match=r"model is wrapped in DataParallel, which does not average"):
        build_method("sam", torch.nn.DataParallel(model), ce, sgd(model))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with pytest.raises(TypeError, match=r"wrapped in DistributedDataParallel.*pass the bare model"):
            build_method("sampa", ddp, ce, sgd(ddp))
    finally:
        dist.destroy_process_group()


def test_bfloat16_autocast_trains_and_float16_is_an_error():
    """bfloat16 through method.autocast (or an autocast around the step) works; float16 would need a
    GradScaler, which cannot reach a loss the step differentiates itself."""
    torch.manual_seed(0)
    model = BNNet()
    method = build_method("sampa", model, ce, sgd(model))
    method.autocast = torch.bfloat16
    records = run_steps(method, indexed_batches(), 6)
    assert records[-1].loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method.step(*batch())
    message = r"float16 autocast is not supported: .* use bfloat16 \(method.autocast = torch.bfloat16\)"
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(RuntimeError, match=message):
        method.step(*batch())
    method.autocast = torch.float16
    with pytest.raises(RuntimeError, match=message):
        method.step(*batch())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 10, 5), r"epoch must be an integer >= 0 \(got -1\)"),
        ((0, 0, 5), r"epochs must be an integer >= 1 \(got 0\)"),
        ((0, 10, 0), r"steps_per_epoch must be an integer >= 1 \(got 0\)"),
        ((0, 10.0, 5), r"epochs must be an integer >= 1 \(got 10.0\)"),
    ],
)
def test_start_epoch_rejects_what_no_loop_has(args, match):
    """e.g. ``len(loader)`` of an empty loader: AE-SAM's schedule would divide by epochs x steps."""
    model = BNNet()
    method = build_method("aesam", model, ce, sgd(model))
    with pytest.raises(ValueError, match=f"start_epoch: {match}"):
        method.start_epoch(*args)
