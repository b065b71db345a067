"""Where a result came from: code version, package versions, hardware, command line."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "nvidia-ml-py", "snakemake")


def provenance(devices: list[torch.device]) -> dict[str, Any]:
    """A JSON-serialisable description of the code, environment and devices of this process."""
    return {
        "git": _git_state(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "sampa": _own_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "devices": [_describe(d) for d in devices],
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "argv": sys.argv,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _git_state(here: Path = Path(__file__)) -> dict[str, Any]:
    """The commit of the git checkout this code (``here``: this module) runs from. None (sha and dirty) for
    an installed package: its folder may lie inside another repository (a project's .venv), whose commit
    says nothing about it; the installed version is ``sampa``."""
    here = here.resolve()
    root = here.parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "--", here.relative_to(root).as_posix()) is None:
        return {"sha": None, "dirty": None}  # this file is not tracked there: not a checkout of sampa-bench
    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def _own_version() -> str | None:
    """The version of the installed sampa-bench distribution that this code is (a wheel's files, or an
    editable install of this checkout); None for code that no installation provides, e.g. a checkout on
    ``PYTHONPATH`` beside some other installation."""
    try:
        dist = importlib.metadata.distribution("sampa-bench")
    except importlib.metadata.PackageNotFoundError:
        return None
    package = Path(__file__).resolve().parents[1]
    installed = Path(dist.locate_file("sampa")).resolve()
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    editable = direct.get("dir_info", {}).get("editable") and direct.get("url", "").startswith("file://")
    source = Path(urllib.parse.unquote(direct["url"][len("file://") :])) / "sampa" if editable else None
    return dist.version if package in {installed, source} else None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _describe(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"device": str(device), "name": _cpu_name()}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": str(device),
        "name": props.name,
        "uuid": str(props.uuid),
        "memory_mib": props.total_memory // 2**20,
        "capability": f"{props.major}.{props.minor}",
    }
