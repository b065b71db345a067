"""sampa-bench as a user gets it: a wheel installed (without the checkout) into an environment of its own,
used from a folder that is no checkout (README "Install as a library"). Provenance of installed code.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_api import readme_loop_code

from sampa import experiments

ROOT = Path(__file__).resolve().parents[1]
#: the module (sampa.metrics exports its function of the same name)
provenance = importlib.import_module("sampa.metrics.provenance")
TINY_RUN = ["--model", "tinycnn", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "32"]
TINY_DATA = ["--synthetic-train-size", "64", "--synthetic-test-size", "32", "--device", "cpu"]
AUTHOR = ["-c", "user.name=u", "-c", "user.email=u@example.org"]
LOADER = """import sampa, torch
loader = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def user_repository(path: Path) -> Path:
    """A git repository of the user's own, with one commit (HEAD exists)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    git(path, *AUTHOR, "commit", "-q", "--allow-empty", "-m", "1")
    return path


def tracked_files(*under: str) -> set[str]:
    """The checkout's git-tracked files (``under`` these paths only, if given)."""
    return set(git(ROOT, "ls-files", "-z", "--", *under).split("\0")) - {""}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """A source distribution built from a copy of the checkout's tracked files (the build writes *.egg-info
    beside its sources: not into the checkout), by setuptools' build backend without isolation."""
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    stray = source / "tests" / "__pycache__" / "conftest.cpython-311.pyc"  # as a checkout that ran its tests
    stray.parent.mkdir()
    stray.write_bytes(b"")
    out = tmp_path_factory.mktemp("sdist")
    build = f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"
    subprocess.run([sys.executable, "-c", build], cwd=source, check=True, capture_output=True)
    [built] = out.glob("sampa_bench-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory) -> Path:
    """A wheel built from the unpacked sdist, as pip builds one from a source release."""
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, filter="data")
    [source] = unpacked.iterdir()
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*cmd, str(source)], check=True, capture_output=True)
    [built] = out.glob("sampa_bench-*.whl")
    return built


def test_the_sdist_and_its_wheel_ship_every_file_of_the_package_and_the_config_schema(sdist, wheel):
    """Package data (the config schema, the paper's numbers) is declared in pyproject: a file the code
    reads that the sdist or the wheel built from it lacks works in a checkout only. The sdist also holds
    what its tests and the workflow read (MANIFEST.in); the wheel holds the package only."""
    tracked = tracked_files("sampa")
    with tarfile.open(sdist) as tar:
        in_sdist = {name.partition("/")[2] for name in tar.getnames()}
    assert tracked <= in_sdist, sorted(tracked - in_sdist)
    source_only = tracked_files("tests", "docs", "configs", "workflow", "profiles", "benchmarks", "Snakefile")
    assert "tests/conftest.py" in source_only and "Snakefile" in source_only
    assert source_only <= in_sdist, sorted(source_only - in_sdist)
    assert not [name for name in in_sdist if "__pycache__" in name or name.endswith(".pyc")]  # the stray
    names = set(zipfile.ZipFile(wheel).namelist())
    assert tracked <= names, sorted(tracked - names)
    assert experiments.SCHEMA_PATH.relative_to(ROOT).as_posix() in names
    assert {name.split("/")[0] for name in names} == {"sampa", f"{wheel.name.split('-py')[0]}.dist-info"}


def test_git_provenance_is_of_a_checkout_of_sampa_bench_only(tmp_path):
    """Code installed in a folder inside some other repository (a project's .venv) claims no commit."""
    module = Path(provenance.__file__)
    assert provenance._git_state(module)["sha"] == git(ROOT, "rev-parse", "HEAD").strip()
    project = tmp_path / "project"
    installed = project / ".venv" / "site-packages" / "sampa" / "metrics" / "provenance.py"
    installed.parent.mkdir(parents=True)
    shutil.copy2(module, installed)
    user_repository(project)
    assert provenance._git_state(installed) == {"sha": None, "dirty": None}


@pytest.mark.slow  # a venv, the README loop and a training run in fresh interpreters: ~40 s on 2 loaded cores
def test_an_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    """From a project folder of the user's own (a git repository, with its .venv inside): the command
    line, the README's training loop, a training run with its provenance, a plan of a shipped config and
    a bad config's one-line error."""
    project = user_repository(tmp_path / "project")
    venv = project / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # --ignore-installed: the base environment's sampa-bench (pip install -e .) would satisfy the request
    install = ["install", "-q", "--no-deps", "--ignore-installed", str(wheel)]
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *install], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not this checkout's code

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)

    sampa = str(venv / "bin" / "sampa")
    helped = run(sampa, "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: sampa") and "train one run" in helped.stdout

    train, _ = readme_loop_code()
    script = project / "loop.py"  # README's loop as written, but for our loader and 2 of its 200 epochs
    script.write_text(LOADER + train.replace("epochs = 200\n", "epochs = 2\n") + "print(sampa.__file__)\n")
    looped = run(str(venv / "bin" / "python"), str(script))
    assert looped.returncode == 0, looped.stderr
    *epochs, imported = looped.stdout.splitlines()
    assert [line.split()[0] for line in epochs] == ["0", "1"] and (project / "checkpoint.pt").exists()
    assert Path(imported).is_relative_to(venv)  # the wheel's code, not a checkout's

    trained = run(sampa, "train", *TINY_RUN, *TINY_DATA, "--optimizer", "sampa", "--out", "run")
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((project / "run" / "metrics.json").read_text())
    version = wheel.name.split("-")[1]
    assert metrics["status"] == "complete" and metrics["provenance"]["sampa"] == version
    assert metrics["provenance"]["git"] == {"sha": None, "dirty": None}  # not the project's commit

    planned = run(sampa, "plan", "--config", str(ROOT / "configs" / "smoke.yaml"), "--out", "plan.csv")
    assert planned.returncode == 0, planned.stderr
    assert re.search(r"total +\d+ distinct runs", planned.stdout)
    assert (project / "plan.csv").read_text().startswith("experiment,")

    (project / "bad.yaml").write_text("name: bad\nbogus: 1\n")
    bad = run(sampa, "plan", "--config", "bad.yaml")
    assert bad.returncode == 2 and not bad.stdout
    [line] = bad.stderr.splitlines()
    assert line.startswith("sampa plan: error: (top level):")
    assert "('bogus' was unexpected); valid keys: name," in line
