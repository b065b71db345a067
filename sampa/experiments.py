"""Experiments as data: expand a workflow config (``configs/*.yaml``) into planned training runs.

A config lists *experiments* (the paper's tables and figures). A table or figure experiment is a grid
``arms x grid points x seeds``; an *arm* is one optimizer with its hyperparameters and run settings
(a column of the paper's tables). Settings are merged in this order, later winning:

    config ``run`` < experiment ``run`` < arm < grid point < matching ``overrides`` < seed

Every planned run has a deterministic directory (no timestamps) made of its settings, e.g.
``cifar10/resnet56/sam/rho=0.05/epochs=200/seed0``. Values equal to the defaults of
:class:`sampa.config.RunConfig` or of the method's hyperparameters are left out, and numbers are
written canonically (0.05, 5e-2 and "5e-2" give one path), so identical runs planned by several
experiments are trained once and shared. Each run's config is checked by
:func:`sampa.config.validate` when it is planned; a bad value is one line naming the experiment and
the arm (:class:`PlanError`).

Machine settings (device, threads, data location) are not part of a run's identity and never
appear in a config: the workflow gives each job its GPUs (``use_gpus``), its threads (Snakemake's
``threads``) and the data location (``$SAMPA_DATA``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import yaml

from sampa.config import MACHINE_KEYS, ignored_keys  # MACHINE_KEYS: set per machine, not by experiments
from sampa.glue_tasks import GLUE_DISPLAY
from sampa.names import MODEL_DISPLAY

if TYPE_CHECKING:
    from sampa.config import RunConfig

#: the workflow config's JSON schema: package data (pyproject), also what the workflow's validate() reads
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
#: given by arms and seeds, not by ``run`` mappings
RESERVED_KEYS = ("optimizer", "hparams", "seed")
#: the first path levels of a run directory (the remaining settings form the last levels)
PATH_KEYS = ("dataset", "model")
DATASET_DISPLAY = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "synthetic": "Synthetic-10",
    "synthetic100": "Synthetic-100",
    "synthetic-text": "Synthetic text",
    "imagenet": "ImageNet-1K",
    "imagefolder-toy": "Toy ImageFolder (generated)",
    **GLUE_DISPLAY,
}
#: the order of methods in the paper's tables and figures (``arms: all``); others follow in registry order
PAPER_ORDER = ("sgd", "sam", "sampa", "randsam", "optsam", "samdb", "looksam", "aesam", "saf", "mesa", "esam")
PAPER_ORDER += ("msam", "sampa-msam", "asam", "sampa-asam", "samon", "sampa-samon", "vasso", "sampa-vasso")
PAPER_ORDER += ("bisam", "sampa-bisam", "gnp", "vsam")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")


class PlanError(ValueError):
    """The workflow config cannot be planned (message: one line)."""


@dataclass(frozen=True)
class PlannedRun:
    """One training run of one experiment.

    ``cell`` maps each axis of the experiment (``arm`` and every grid axis) to the label shown in
    tables and figures; ``values`` holds the raw value behind each label (for numeric plot axes).
    ``settings`` is the run's configuration as given to ``python -m sampa train --settings``.
    """

    experiment: str
    cell: dict[str, str]
    values: dict[str, Any]
    seed: int
    settings: dict[str, Any]
    path: str
    reference: bool = False

    def gpus(self, use_gpus: bool) -> int:
        """GPUs this run occupies: its device count on a GPU workflow, none otherwise."""
        return int(self.settings.get("devices", 1)) if use_gpus else 0


@dataclass
class Plan:
    """All experiments of a config, expanded. ``data``: run path -> the dataset to verify/extract (or,
    the toy ImageFolder, write) before it (none for data generated in memory); ``timing``: experiments
    whose numbers are measured on the machine; ``minutes``: run path -> its time limit on a cluster
    (:func:`runtime_minutes`); ``checked``: what each "dataset model" pair of the config needs that is
    missing here (:func:`sampa.requirements.missing`); such runs are not planned, and their experiment's
    spec says what they need (``needs``, or ``not_run`` when none of its runs can run here); ``sizes``:
    how many runs each experiment has, those not planned too."""

    name: str
    use_gpus: bool
    specs: dict[str, dict[str, Any]]
    runs: dict[str, list[PlannedRun]] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    timing: list[str] = field(default_factory=list)
    minutes: dict[str, int] = field(default_factory=dict)
    checked: dict[str, list[str]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def timing_runs(self) -> set[str]:
        """Paths of the runs whose numbers enter a time or memory table or figure."""
        return {run.path for name in self.timing for run in self.runs.get(name, [])}

    def prepared_datasets(self) -> list[str]:
        return sorted(set(self.data.values()))

    def unique_runs(self) -> dict[str, PlannedRun]:
        """One planned run per run directory (shared runs counted once), in plan order."""
        out: dict[str, PlannedRun] = {}
        for runs in self.runs.values():
            for run in runs:
                out.setdefault(run.path, run)
        return out

    def of_kind(self, kind: str) -> list[str]:
        return [name for name, spec in self.specs.items() if spec["kind"] == kind]


# ----------------------------------------------------------------------------------------------
# Loading and structural validation


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a workflow config file (YAML mapping; a file of run settings is a one-line error saying so)."""
    from sampa import io
    from sampa.config import FIELD_NAMES

    values = io.read_yaml_mapping(path, "workflow config", PlanError)
    if "experiments" not in values and set(values) & set(FIELD_NAMES):
        raise PlanError(
            f"config {str(path)!r} is a file of run settings (keys of sampa.config.RunConfig, no "
            "'experiments'); train it with sampa train --config, or give a workflow config (configs/*.yaml)"
        )
    return values


@functools.cache
def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_error(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> str | None:
    """One line describing the most relevant JSON-schema violation of ``config``, or None."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema or load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"{where}: {_schema_message(error)}"


def _schema_message(error: Any) -> str:
    """jsonschema's message of one violation, with the valid choices where it leaves them out."""
    if error.validator == "additionalProperties" and "properties" in error.schema:
        return f"{error.message}; valid keys: {', '.join(error.schema['properties'])}"
    if error.validator == "not" and {"enum", "const"} & set(error.validator_value):  # propertyNames
        value = error.validator_value
        reserved = ", ".join(map(str, value.get("enum", [value.get("const")])))
        return f"key {error.instance!r} is not allowed here (reserved: {reserved})"
    if error.validator == "anyOf" and error.context:
        wants = dict.fromkeys(e.message for e in error.context)
        return f"{error.instance!r} is not valid: " + ", or ".join(wants)
    return str(error.message)


#: spec key: the default hyperparameters of its arms' methods, as planned (:func:`method_defaults`)
METHOD_DEFAULTS = "method_defaults"
#: what :func:`resolve`, :func:`mark_requirements` and :func:`plan` add to an experiment of the config
SPEC_KEYS = ("id", "note", "profile", "needs", "not_run", METHOD_DEFAULTS)


#: the arms of a resolved experiment: a list of the config's arms with hparams and run filled in
_RESOLVED_ARMS = {
    "type": "array",
    "items": {"allOf": [{"$ref": "#/$defs/arm"}, {"required": ["hparams", "run"]}]},
}


def _spec_keys_schema() -> dict[str, Any]:
    """What :func:`resolve`, :func:`mark_requirements` and :func:`plan` add (``SPEC_KEYS``): JSON schema."""
    from sampa.names import METHOD_NAMES

    scalar = {"type": ["number", "string", "boolean", "null"]}
    defaults = {"type": "object", "additionalProperties": scalar}
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "note": {"type": "string"},
            "profile": {"type": "string"},
            "needs": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "not_run": {"type": "string"},
            METHOD_DEFAULTS: {
                "type": "object",
                "propertyNames": {"enum": list(METHOD_NAMES)},
                "additionalProperties": defaults,
            },
        },
    }


def check_spec(spec: Mapping[str, Any], flag: str) -> list[PlannedRun] | None:
    """A resolved experiment given on the command line (``--spec``) is one :func:`plan` could have
    written: the schema's experiment with what :func:`resolve` writes (arms in full, seeds, run, grid,
    overrides) and what plan adds (``SPEC_KEYS``), whose runs expand and whose metrics and axes
    :func:`check_layout` accepts; one-line :class:`PlanError` otherwise.

    ``method_defaults`` must name registered methods (:data:`sampa.names.METHOD_NAMES`, without torch)
    and map each to hyperparameter names and JSON scalars; the runs' hyperparameters must be among those
    names. The values themselves are trusted: the methods' real defaults live in their ``Hparams``
    classes, which cannot be read without importing torch (what a planned spec spares these commands).
    Without jsonschema (a bare GPU image running the doctor's workflow check; the plan that wrote the spec
    validated it) only the required keys and the layout are checked. Returns the runs it expanded (every
    run, :func:`expand_experiment`), or None for a spec that says ``not_run`` (not expanded).
    """
    schema = _has_jsonschema()
    core = {k: v for k, v in spec.items() if k not in SPEC_KEYS and (k != "arms" or v)}  # a toy: no arms
    resolved = {"allOf": [{"$ref": "#/$defs/experiment"}, {"properties": {"arms": _RESOLVED_ARMS}}]}
    message = schema_error(core, {"$defs": load_schema()["$defs"], **resolved}) if schema else None
    lacking = [k for k in ("id", "seeds", "run", "arms", "grid", "overrides") if k not in spec]
    if message is None and lacking:  # what resolve() always writes
        message = f"(top level): {lacking[0]!r} is a required property"
    if message is None and schema:
        message = schema_error({k: spec[k] for k in SPEC_KEYS if k in spec}, _spec_keys_schema())
    if message:
        raise PlanError(f"{flag} is not a resolved experiment: {message}")
    if spec.get("not_run"):  # shown as what it needs: no runs (whose extras may be missing here)
        check_cells(spec)  # expand_experiment checks them otherwise
        return None
    runs = expand_experiment(spec)
    check_layout(spec, runs)
    return runs


def _has_jsonschema() -> bool:
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return False
    return True


def check_schema(config: Mapping[str, Any]) -> None:
    message = schema_error(config)
    if message:
        raise PlanError(message)


# ----------------------------------------------------------------------------------------------
# Canonical values and run paths


def normalize(value: Any) -> Any:
    """Numbers written as strings ("5e-2": YAML 1.1 reads it as text) become numbers; recursive."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if _INTEGER.fullmatch(text) else float(text)
    if isinstance(value, Mapping):
        return {str(k): normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """The one spelling of a value in run paths: 0.05, 5e-2 -> '0.05'; 1, 1.0 -> '1'; [a, b] -> 'a+b'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return "+".join(canonical(v) for v in value)
    if isinstance(value, str):
        if not value or "/" in value or any(c.isspace() for c in value):
            raise PlanError(f"setting value {value!r} cannot be part of a run path (empty, '/' or space)")
        return value
    raise PlanError(f"setting value {value!r} must be a number, string, boolean or list")


def _slug(settings: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={canonical(v)}" for k, v in sorted(settings.items())) or "default"


@functools.cache
def run_defaults() -> RunConfig:
    """RunConfig's defaults (sampa.config is imported on first use: it brings torch along)."""
    from sampa.config import RunConfig

    return RunConfig()


def run_path(settings: Mapping[str, Any]) -> str:
    """``dataset/model/optimizer/<hparams>/<other settings>/seed<k>`` (explicit non-default values only)."""
    defaults = run_defaults()
    rest = {k: v for k, v in settings.items() if k not in (*PATH_KEYS, *RESERVED_KEYS)}
    parts = [str(settings.get(k, getattr(defaults, k))) for k in PATH_KEYS]
    parts += [settings["optimizer"], _slug(settings.get("hparams", {})), _slug(rest)]
    parts.append(f"seed{settings.get('seed', defaults.seed)}")
    return "/".join(parts)


def _without_defaults(values: Mapping[str, Any], defaults: Any) -> dict[str, Any]:
    """Drop entries equal (canonically) to the attribute of the same name on ``defaults``."""
    out = {}
    for key, value in values.items():
        if hasattr(defaults, key) and _same(value, getattr(defaults, key)):
            continue
        out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return canonical(a) == canonical(b)
    except PlanError:
        return a == b


# ----------------------------------------------------------------------------------------------
# Resolving an experiment into a self-contained spec


def resolve(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Experiment ``name`` with everything it inherits from the config (JSON-serialisable).

    Table and figure commands receive this spec, so a change to one experiment re-makes only its
    own outputs.
    """
    exp = normalize(config["experiments"][name])
    spec: dict[str, Any] = {
        "id": name,
        "kind": exp["kind"],
        "title": exp.get("title", name),
        "paper": exp.get("paper", ""),
        "caption": exp.get("caption", ""),
        "note": config.get("note", ""),
        "profile": config["name"],
    }
    spec["seeds"] = list(exp.get("seeds", config["seeds"]))
    spec["run"] = {**normalize(config.get("run", {})), **exp.get("run", {})}
    spec["arms"] = _resolve_arms(exp.get("arms", []), normalize(config), name)
    spec["grid"] = exp.get("grid", {})
    spec["overrides"] = [*normalize(config.get("overrides", [])), *exp.get("overrides", [])]
    for part in ("table", "figure"):
        if part in exp:
            spec[part] = exp[part]
    return spec


def _resolve_arms(arms: Any, config: dict[str, Any], experiment: str) -> list[dict[str, Any]]:
    if arms == "all":
        return all_arms(config.get("method_hparams", {}))
    library = config.get("arms", {})
    out = []
    for arm in arms:
        if isinstance(arm, str):
            if arm not in library:
                known = ", ".join(library) or "(none)"
                raise PlanError(f"experiment {experiment!r}: unknown arm {arm!r}; arms defined: {known}")
            arm = library[arm]
        out.append(
            {
                "label": arm["label"],
                "optimizer": arm["optimizer"],
                "hparams": dict(arm.get("hparams", {})),
                "run": dict(arm.get("run", {})),
                "reference": bool(arm.get("reference", False)),
            }
        )
    return out


def all_arms(method_hparams: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One arm per registered optimizer (``arms: all``), labelled as in the paper's tables."""
    from sampa.optim import METHOD_NAMES

    check_method_hparams(method_hparams)
    arms = []
    rank = {name: i for i, name in enumerate(PAPER_ORDER)}
    for name in sorted(METHOD_NAMES, key=lambda n: rank.get(n, len(rank))):
        hparams = dict(method_hparams.get(name, {}))
        arms.append(
            {
                "label": method_label(name, hparams),
                "optimizer": name,
                "hparams": hparams,
                "run": {},
                "reference": False,
            }
        )
    return arms


def check_method_hparams(method_hparams: Mapping[str, Mapping[str, Any]]) -> None:
    """``method_hparams`` names registered optimizers and their hyperparameters, whether or not an
    experiment uses ``arms: all``."""
    from sampa.optim import METHOD_NAMES, HyperparameterError, check_method

    unknown = sorted(set(method_hparams) - set(METHOD_NAMES))
    if unknown:
        raise PlanError(
            f"method_hparams: unknown optimizer {unknown[0]!r}; choose one of: {', '.join(METHOD_NAMES)}"
        )
    for name, hparams in method_hparams.items():
        try:
            check_method(name, dict(hparams))
        except HyperparameterError as err:
            raise PlanError(f"method_hparams.{name}: {err}") from None


def method_label(name: str, hparams: Mapping[str, Any]) -> str:
    """The paper's name for a method, with the value of its ``label_hparam`` ("SAMPa-0.2")."""
    from sampa.optim import method_class

    cls = method_class(name)
    label = cls.display_name or name
    if cls.label_hparam:
        value = hparams.get(cls.label_hparam, getattr(cls.Hparams(), cls.label_hparam))
        label = f"{label}-{canonical(value)}"
    return label


# ----------------------------------------------------------------------------------------------
# Expanding a spec into planned runs


def plan_experiment(spec: Mapping[str, Any]) -> list[PlannedRun]:
    """The runs of a table or figure experiment that can run here, validated: none when the spec says
    ``not_run``, and none of the dataset/model pairs listed in its ``needs`` (:func:`mark_requirements`)."""
    return runnable(spec, expand_experiment(spec))


def runnable(spec: Mapping[str, Any], runs: list[PlannedRun]) -> list[PlannedRun]:
    """Those of the experiment's ``runs`` (:func:`expand_experiment`) that can run here, as the spec says."""
    if spec.get("not_run"):
        return []
    needs = spec.get("needs", {})
    return [run for run in runs if requirement_key(run.settings) not in needs]


def expand_experiment(spec: Mapping[str, Any], matched: set[int] | None = None) -> list[PlannedRun]:
    """Every run of a table or figure experiment, validated, whether or not it can run here; the indices
    of the spec's ``overrides`` that match a run are added to ``matched``."""
    check_cells(spec)
    matched = set() if matched is None else matched
    seeds = spec["seeds"]
    return [_planned_run(spec, arm, points, seed, matched) for arm, points in _combos(spec) for seed in seeds]


def _combos(spec: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], list[tuple[str, dict[str, Any]]]]]:
    """Every arm with every grid point: ``(arm, [(axis, point), ...])`` in table order (none without arms)."""
    if not spec.get("arms"):
        return []
    axes = [(axis, _points(axis, values, spec["id"])) for axis, values in spec["grid"].items()]
    names = [axis for axis, _ in axes]
    combos = itertools.product(spec["arms"], *(points for _, points in axes))
    return [(arm, list(zip(names, points, strict=True))) for arm, *points in combos]


def check_cells(spec: Mapping[str, Any]) -> None:
    """The experiment's id names its files and each arm's label its own cells: an id of letters, digits,
    '-' and '_' (as the config's experiment names), labels without '/' and no two arms with one label
    (their runs would fill the same table cells); one-line :class:`PlanError` otherwise."""
    pattern = load_schema()["properties"]["experiments"]["propertyNames"]["pattern"]
    if not re.fullmatch(pattern, spec["id"]):
        raise PlanError(
            f"experiment id {spec['id']!r} names files (tables/<id>.md): use letters, digits, '-' and '_'"
        )
    labels = [arm["label"] for arm in spec.get("arms", [])]
    where = f"experiment {spec['id']!r}"
    slashed = next((label for label in labels if "/" in label), None)
    if slashed is not None:
        raise PlanError(f"{where}: arm label {slashed!r} has a '/'; use another character (e.g. '-')")
    twice = _first_repeated(labels)
    if twice is not None:
        raise PlanError(
            f"{where}: two arms are labelled {twice!r} (one table cell for both); give each its own label "
            f"(labels: {', '.join(labels)})"
        )


def _first_repeated(labels: list[str]) -> str | None:
    return next((label for label, count in Counter(labels).items() if count > 1), None)


def _points(axis: str, values: Any, experiment: str) -> list[dict[str, Any]]:
    """Grid values as points ``{label, value, run, hparams}``; scalars set the setting ``axis``."""
    if not isinstance(values, list) or not values:
        raise PlanError(f"experiment {experiment!r}: grid axis {axis!r} needs a non-empty list of values")
    points = []
    for value in values:
        if isinstance(value, Mapping):
            label = str(value.get("label", ""))
            points.append(
                {
                    "label": label,
                    "value": label,
                    "run": value.get("run", {}),
                    "hparams": value.get("hparams", {}),
                }
            )
            continue
        if axis.startswith("hparams."):
            setting: dict[str, Any] = {"run": {}, "hparams": {axis.removeprefix("hparams."): value}}
        else:
            setting = {"run": {axis: value}, "hparams": {}}
        points.append({"label": axis_label(axis, value), "value": value, **setting})
    twice = _first_repeated([point["label"] for point in points])
    if twice is not None:
        raise PlanError(
            f"experiment {experiment!r}: grid axis {axis!r} has two points labelled {twice!r} "
            "(one table cell for both); list each value once"
        )
    return points


def axis_label(axis: str, value: Any) -> str:
    """How a grid value reads in a table: model and dataset names as in the paper, noise in %."""
    if axis == "model":
        return MODEL_DISPLAY.get(value, str(value))
    if axis == "dataset":
        return DATASET_DISPLAY.get(value, str(value))
    if axis == "label_noise":
        return f"{canonical(round(100 * float(value), 6))}%"
    return canonical(value)


def _planned_run(
    spec: Mapping[str, Any],
    arm: Mapping[str, Any],
    points: list[tuple[str, dict[str, Any]]],
    seed: int,
    matched: set[int],
) -> PlannedRun:
    run, hparams, cell, context = _merged(spec, arm, points, matched)
    values = {"arm": arm["label"], **{axis: point["value"] for axis, point in points}}
    settings = _checked_settings(arm["optimizer"], run, hparams, seed, context, spec.get(METHOD_DEFAULTS))
    return PlannedRun(
        experiment=spec["id"],
        cell=cell,
        values=values,
        seed=seed,
        settings=settings,
        path=run_path(settings),
        reference=bool(arm.get("reference", False)),
    )


def _merged(
    spec: Mapping[str, Any],
    arm: Mapping[str, Any],
    points: list[tuple[str, dict[str, Any]]],
    matched: set[int],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], str]:
    """One run's settings and hyperparameters as merged (not yet validated), its cell and its context;
    the indices of the spec's ``overrides`` that match it are added to ``matched``."""
    run = {**spec["run"], **arm["run"]}
    hparams = dict(arm["hparams"])
    for _, point in points:
        run.update(point["run"])
        hparams.update(point["hparams"])
    cell = {"arm": arm["label"], **{axis: point["label"] for axis, point in points}}
    context = _context(spec["id"], cell)
    for index, override in enumerate(spec["overrides"]):
        if _matches(override.get("when", {}), arm, run, hparams, cell, context):
            matched.add(index)
            run.update(override.get("run", {}))
            hparams.update(override.get("hparams", {}))
    return run, hparams, cell, context


def _context(experiment: str, cell: Mapping[str, str]) -> str:
    where = ", ".join(f"{k} {v!r}" for k, v in cell.items())
    return f"experiment {experiment!r} ({where})"


def _matches(
    when: Mapping[str, Any],
    arm: Mapping[str, Any],
    run: Mapping[str, Any],
    hparams: Mapping[str, Any],
    cell: Mapping[str, str],
    context: str,
) -> bool:
    """Does every ``key: value`` (or ``key: [values]``) of ``when`` hold for this run?"""
    defaults = run_defaults()
    for key, wanted in when.items():
        if key == "arm":
            actual = arm["label"]
        elif key == "optimizer":
            actual = arm["optimizer"]
        elif key.startswith("hparams."):
            actual = hparams.get(key.removeprefix("hparams."))
        elif hasattr(defaults, key):
            actual = run.get(key, getattr(defaults, key))
        elif key in cell:  # a grid axis of mappings: its point labels
            actual = cell[key]
        else:
            raise PlanError(f"{context}: override condition on unknown key {key!r}")
        options = wanted if isinstance(wanted, list) else [wanted]
        if not any(_same(actual, option) for option in options):
            return False
    return True


def _checked_settings(
    optimizer: str,
    run: Mapping[str, Any],
    hparams: Mapping[str, Any],
    seed: int,
    context: str,
    planned: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Validate the run with ``sampa.config.validate``; return its explicit non-default settings.

    The seed is checked by the schema; the rest is validated once per distinct setting (memoised).
    ``planned``: the method defaults of a spec the workflow planned (validated then; see
    :func:`method_defaults`): the settings follow from them without validating again (or torch).
    """
    if planned is not None and optimizer in planned:
        unknown = sorted(set(hparams) - set(planned[optimizer]))
        if unknown:  # as check_method says it
            valid = ", ".join(planned[optimizer]) or "(none)"
            raise PlanError(
                f"{context}: unknown hyperparameter {unknown[0]!r} for method {optimizer!r}; valid: {valid}"
            )
        defaults = SimpleNamespace(**planned[optimizer])
        return {**_settings(optimizer, run, hparams, defaults), "seed": seed}
    key = json.dumps([optimizer, run, hparams], sort_keys=True, default=str)
    if key not in _VALIDATED:
        _VALIDATED[key] = _validated(optimizer, run, hparams, context)
    return {**_VALIDATED[key], "hparams": dict(_VALIDATED[key]["hparams"]), "seed": seed}


_VALIDATED: dict[str, dict[str, Any]] = {}


def _validated(
    optimizer: str, run: Mapping[str, Any], hparams: Mapping[str, Any], context: str
) -> dict[str, Any]:
    from sampa.config import ConfigError, config_from_dict, validate
    from sampa.optim import HyperparameterError, method_class

    seed = run_defaults().seed
    bad = sorted(set(run) & {*MACHINE_KEYS, *RESERVED_KEYS})
    if bad:
        raise PlanError(
            f"{context}: {bad[0]!r} cannot be a run setting "
            "(machine settings come from the workflow; optimizer, hparams and seed from arms and seeds)"
        )
    values = {**run, "optimizer": optimizer, "hparams": dict(hparams), "seed": seed}
    try:
        cfg = validate(config_from_dict(copy.deepcopy(values)))
        method_defaults = method_class(optimizer).Hparams()
    except (ConfigError, HyperparameterError, ValueError, TypeError) as err:
        raise PlanError(f"{context}: {err}") from None
    return _settings(cfg.optimizer, run, hparams, method_defaults)


def _settings(
    optimizer: str, run: Mapping[str, Any], hparams: Mapping[str, Any], defaults: Any
) -> dict[str, Any]:
    """A run's explicit settings: those that differ from RunConfig's and the method's ``defaults`` and
    that the run reads (:func:`~sampa.config.ignored_keys`: e.g. a text run ignores ``val_fraction``, a
    CIFAR run the ``synthetic_*`` settings, STS-B ``label_smoothing``, an AdamW run ``momentum``)."""
    ignored = ignored_keys(run)
    run = {k: v for k, v in run.items() if k not in ignored}
    settings = _without_defaults(run, run_defaults())
    settings["optimizer"] = optimizer
    settings["hparams"] = _without_defaults(hparams, defaults)
    for value in [*run.values(), *hparams.values()]:
        canonical(value)  # every value must be writable in a run path
    return settings


def method_defaults(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The default hyperparameters of the methods of ``spec``'s arms. :func:`plan` records them in the
    spec it validated, so the table, figure and scorecard commands, given that spec, expand its runs
    without importing the methods (torch)."""
    from sampa.optim import method_class

    optimizers = sorted({arm["optimizer"] for arm in spec.get("arms", [])})
    return {name: asdict(method_class(name).Hparams()) for name in optimizers}


# ----------------------------------------------------------------------------------------------
# The whole config


def plan(config: Mapping[str, Any], *, schema_checked: bool = False) -> Plan:
    """Check the config's structure (unless done already), resolve and expand every enabled experiment.

    Runs whose data, weights or extra are missing here are not planned (:func:`mark_requirements`): the
    spec lists what they need (``needs``), or says ``not_run`` when no run of the experiment can run;
    its table and the scorecard show it. Each spec records its methods' defaults (:func:`method_defaults`).
    """
    if not schema_checked:
        check_schema(config)
    check_method_hparams(config.get("method_hparams", {}))
    specs = {
        name: resolve(config, name) for name, exp in config["experiments"].items() if exp.get("enabled", True)
    }
    result = Plan(name=config["name"], use_gpus=bool(config.get("use_gpus", False)), specs=specs)
    shared = len(config.get("overrides", []))  # the config's overrides come first in each spec's
    used: set[int] = set()
    for name, spec in specs.items():
        matched: set[int] = set()
        runs = expand_experiment(spec, matched)
        _check_own_overrides(name, spec, matched, shared)
        used |= matched
        check_layout(spec, runs)
        result.runs[name] = mark_requirements(spec, runs, result.checked)
        result.sizes[name] = len(runs)
        spec[METHOD_DEFAULTS] = method_defaults(spec)  # validated: the spec's commands need no torch
    unused = [i for i in range(shared) if i not in used]
    if unused:
        kept = _matched_when_disabled(config)
        unused = [i for i in unused if i not in kept]
    if unused:
        when = config["overrides"][unused[0]].get("when")
        raise PlanError(f"overrides[{unused[0]}]: when {when!r} matches no run of any experiment")
    result.timing = [name for name, spec in specs.items() if any(map(is_measured, _metrics_of(spec)))]
    result.data = _prepared(result)
    check_runtime(config.get("runtime", {}))
    result.minutes = {
        path: runtime_minutes(run.settings, config.get("runtime", {}))
        for path, run in result.unique_runs().items()
    }
    return result


def _matched_when_disabled(config: Mapping[str, Any]) -> set[int]:
    """The indices of the config's ``overrides`` that match a run of a disabled experiment (``enabled:
    false``): kept for when it is enabled again, not a typo. Its runs are merged, not validated (a disabled
    experiment is not checked: one that cannot even be resolved matches nothing)."""
    matched: set[int] = set()
    for name, exp in config["experiments"].items():
        if exp.get("enabled", True):
            continue
        try:
            spec = resolve(config, name)
            for arm, points in _combos(spec):
                _merged(spec, arm, points, matched)
        except PlanError:
            continue
    return matched


def _check_own_overrides(name: str, spec: Mapping[str, Any], matched: set[int], shared: int) -> None:
    """Each override of the experiment itself (after the config's ``shared`` ones) matches a run: one that
    matches none has a typo in its ``when`` and would silently change nothing."""
    for index in range(shared, len(spec["overrides"])):
        if index not in matched:
            when = spec["overrides"][index].get("when")
            arms = ", ".join(arm["label"] for arm in spec["arms"]) or "(none)"
            where = f"experiment {name!r}: overrides[{index - shared}]"
            raise PlanError(f"{where}: when {when!r} matches no run (arms: {arms})")


def requirement_key(settings: Mapping[str, Any]) -> str:
    """A run's dataset and model ("cifar10 resnet56"): what :func:`sampa.requirements.missing` checks."""
    defaults = run_defaults()
    return " ".join(str(settings.get(k, getattr(defaults, k))) for k in ("dataset", "model"))


def mark_requirements(
    spec: dict[str, Any], runs: list[PlannedRun], checked: dict[str, list[str]] | None = None
) -> list[PlannedRun]:
    """The runs of ``runs`` whose data, weights and extras are here; ``spec`` records the others.

    ``spec["needs"]`` maps each dataset/model pair that lacks something to what it needs (one line
    each), or, when no run can run here, ``spec["not_run"]`` says it in one line. ``checked`` collects
    the answer of every pair checked (each pair once).
    """
    from sampa.requirements import merged

    checked = {} if checked is None else checked
    needs = {key: lines for key in _requirement_keys(runs, checked) if (lines := checked[key])}
    spec.pop("needs", None)
    spec.pop("not_run", None)
    if not needs:
        return runs
    here = runnable({"needs": needs}, runs)
    if here:
        spec["needs"] = needs
    else:
        spec["not_run"] = "; ".join(merged([line for lines in needs.values() for line in lines]))
    return here


def partial_runs(spec: Mapping[str, Any], here: int, total: int) -> str:
    """How many runs of an experiment with ``needs`` can run here (``here``, of its ``total``) and what
    the rest needs ("32 of 36 runs here (the rest needs GLUE RTE at ...)")."""
    from sampa.requirements import merged

    needs = merged([line for lines in spec.get("needs", {}).values() for line in lines])
    return f"{here} of {total} runs here (the rest {'; '.join(needs)})"


def _requirement_keys(runs: list[PlannedRun], checked: dict[str, list[str]]) -> list[str]:
    """The dataset/model pairs of ``runs`` (in plan order), each checked into ``checked`` once."""
    from sampa.requirements import missing

    keys = list(dict.fromkeys(requirement_key(run.settings) for run in runs))
    for key in keys:
        if key not in checked:
            checked[key] = missing(*key.split(" "))
    return keys


def requirements_changed(checked: Mapping[str, list[str]]) -> bool:
    """Whether what was missing when a plan was made differs now (data or weights added, extra installed)."""
    from sampa.requirements import missing

    return any(missing(*key.split(" ")) != list(needs) for key, needs in checked.items())


def _prepared(result: Plan) -> dict[str, str]:
    """Run path -> its dataset, for datasets that are files to verify or write (not generated in memory
    like synthetic data)."""
    from sampa.data.cifar import CIFAR_SOURCES
    from sampa.paths import TOY_IMAGEFOLDER

    default = run_defaults().dataset
    datasets = {path: run.settings.get("dataset", default) for path, run in result.unique_runs().items()}
    prepared = {*CIFAR_SOURCES, TOY_IMAGEFOLDER}  # the toy ImageFolder: generated once by the data step
    return {path: name for path, name in datasets.items() if name in prepared}


# ----------------------------------------------------------------------------------------------
# Tables and figures: every setting checked when the plan is built


def _metrics_of(spec: Mapping[str, Any]) -> list[str]:
    if spec["kind"] == "table":
        average = spec["table"].get("average_column")
        return [*spec["table"]["metrics"], *([average] if average else [])]
    if spec["kind"] == "figure" and spec["figure"]["plot"] != "toy":
        default = "val_acc" if spec["figure"]["plot"] == "epochs" else "test_acc"
        return list(spec["figure"].get("metrics", [default]))
    return []


def is_measured(name: str) -> bool:
    """A quantity measured on the machine (time, memory, communication), sensitive to other jobs."""
    from sampa.report.metrics import metric

    return metric(name).column.split(".")[0] in ("time", "memory", "backend")


def check_layout(spec: Mapping[str, Any], runs: list[PlannedRun]) -> None:
    """Metric names, table axes, bolding groups and figure axes of one experiment (one-line PlanError)."""
    from sampa.report.metrics import METRICS

    where = f"experiment {spec['id']!r}"
    per_epoch = spec.get("figure", {}).get("plot") == "epochs"
    for name in _metrics_of(spec):
        if name not in METRICS:
            raise PlanError(f"{where}: unknown metric {name!r}; choose one of: {', '.join(METRICS)}")
        if METRICS[name].per_epoch != per_epoch:
            kind = "per-epoch" if METRICS[name].per_epoch else "final"
            raise PlanError(
                f"{where}: metric {name!r} is a {kind} quantity, not one for this "
                f"{'figure (plot: epochs)' if per_epoch else spec['kind']}"
            )
    axes = list(runs[0].cell) if runs else ["arm"]
    if spec["kind"] == "table":
        _check_table(spec["table"], runs, axes, where)
    elif spec["kind"] == "figure":
        _check_figure(spec["figure"], axes, where)


def _check_table(layout: Mapping[str, Any], runs: list[PlannedRun], axes: list[str], where: str) -> None:
    shown = [*layout["rows"], *layout["columns"]]
    for axis in shown:
        if axis != "metric" and axis not in axes:
            raise PlanError(f"{where}: table axis {axis!r} is not one of: metric, {', '.join(axes)}")
    hidden = [a for a in axes if a not in shown and len({run.cell[a] for run in runs}) > 1]
    if hidden:
        raise PlanError(f"{where}: axis {hidden[0]!r} varies, so it must be in the table's rows or columns")
    if "metric" not in shown and len(layout["metrics"]) > 1:
        raise PlanError(f"{where}: several metrics need 'metric' in the table's rows or columns")
    if layout.get("average_column") and not [a for a in layout["columns"] if a != "metric"]:
        raise PlanError(f"{where}: average_column needs a column axis to average over (e.g. dataset)")
    labels = {run.cell["arm"] for run in runs}
    for group in layout.get("best_groups", []):
        unknown = [label for label in group if label not in labels]
        if unknown:
            raise PlanError(
                f"{where}: best_groups names {unknown[0]!r}, not an arm; arms: {', '.join(sorted(labels))}"
            )


def _check_figure(layout: Mapping[str, Any], axes: list[str], where: str) -> None:
    grid = [a for a in axes if a != "arm"]
    if layout["plot"] == "line" and "x" not in layout:
        raise PlanError(
            f"{where}: plot 'line' needs 'x', one of the grid axes: {', '.join(grid) or '(none)'}"
        )
    for key in ("x", "facet"):
        if key in layout and layout[key] not in grid:
            raise PlanError(
                f"{where}: figure {key} {layout[key]!r} is not a grid axis; grid axes: "
                f"{', '.join(grid) or '(none)'}"
            )


# ----------------------------------------------------------------------------------------------
# Machine and cluster resources


#: minutes per epoch on one A100-class GPU at batch 128 for one gradient per step (CIFAR, 45k images)
MINUTES_PER_EPOCH = {
    "tinycnn": 0.05,
    "resnet18": 0.3,
    "resnet20": 0.1,
    "resnet32": 0.15,
    "resnet56": 0.25,
    "wrn28-2": 0.25,
    "vgg19bn": 0.3,
    "wrn28-10": 1.5,
    "densenet121": 1.5,
    "pyramidnet110": 1.5,
    # Tables 3, 5, 6 (their own data): an ImageNet-1K epoch at batch 256 with 8 decoding workers; CIFAR at
    # 224 px; the largest GLUE task (MNLI, QQP: ~12k steps of 32 x 128 tokens)
    "resnet50": 20.0,
    "vit-b16": 3.0,
    "bert-base": 20.0,
    # smoke Table 5 (synthetic and synthetic100, batch 16, 72 steps an epoch; its SAM and SAMPa-0.2 runs, each
    # `sampa train --settings <planned> --gpus 0 --threads 1`, 8 runs): 0.84-1.9 s of training an epoch
    # (median 1.3 s; one run 3.2-3.5 s, load 4 on 2 cores), evaluation 0.01 s; x RUNTIME_MARGIN covers 3.6 s
    "vit-tiny": 0.02,
    # smoke Table 6 (synthetic-text, batch 32, 16 steps an epoch; benchmarks/table6_smoke.py's runs): AdamW
    # 0.19 s of training and 0.02 s of evaluation an epoch, SAMPa-0.1 at most 0.64 s (one CPU thread, load 2)
    "bert-tiny": 0.005,
}
RUNTIME_MARGIN = 3.0  # two gradients per step (SAM-like methods) and a slower GPU, with room to spare
RUNTIME_MINIMUM = 15


def check_runtime(runtime: Mapping[str, Any]) -> None:
    """The config's ``runtime`` (minutes per epoch per model, for cluster time limits)."""
    if not isinstance(runtime, Mapping):
        raise PlanError(f"runtime must be a mapping model -> minutes per epoch (got {runtime!r})")
    for model, minutes in runtime.items():
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes < math.inf:
            raise PlanError(f"runtime.{model}: minutes per epoch must be a positive number (got {minutes!r})")


def runtime_minutes(settings: Mapping[str, Any], per_epoch: Mapping[str, float] | None = None) -> int:
    """Time limit of a run on a cluster: epochs x minutes per epoch of its model (``per_epoch`` overrides
    :data:`MINUTES_PER_EPOCH`) x a margin, at least :data:`RUNTIME_MINIMUM` minutes."""
    defaults = run_defaults()
    model = settings.get("model", defaults.model)
    minutes = {**MINUTES_PER_EPOCH, **(per_epoch or {})}.get(model, max(MINUTES_PER_EPOCH.values()))
    epochs = int(settings.get("epochs", defaults.epochs))
    return max(RUNTIME_MINIMUM, math.ceil(epochs * minutes * RUNTIME_MARGIN))


def check_devices(result: Plan, gpus: int) -> None:
    """Refuse a plan whose runs need more GPUs than the workflow may use (``--resources gpu=N``)."""
    needs = max((run.gpus(result.use_gpus) for run in result.unique_runs().values()), default=0)
    if needs > gpus:
        run = next(r for r in result.unique_runs().values() if r.gpus(result.use_gpus) == needs)
        raise PlanError(
            f"run {run.path} needs {needs} GPUs but the workflow may use {gpus} (--resources gpu={gpus}); "
            "give more GPUs or disable its experiment"
        )


def cached_plan(
    config: Mapping[str, Any],
    cache: str | Path,
    check: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> Plan:
    """:func:`plan`, reusing ``cache`` when neither the config, the schema nor any source file of the
    sampa package changed since it was written, and what its runs need is missing or present as it was.
    ``check`` validates the config's structure (e.g. Snakemake's schema validation, which may fill in
    defaults; default :func:`check_schema`) and returns the config to plan; it runs only when the cache
    misses. A cache hit needs no torch import (but for a GLUE file check) and no schema validation,
    which are most of a dry run's own time."""
    from sampa import io

    key = _plan_key(config)
    try:
        stored = json.loads(Path(cache).read_text())
        if stored["key"] == key:
            cached = _plan_from_dict(stored["plan"])
            if not requirements_changed(cached.checked):
                return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = plan(config) if check is None else plan(check(config), schema_checked=True)
    io.write_text(cache, json.dumps({"key": key, "plan": asdict(result)}, sort_keys=True))
    return result


def _plan_key(config: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(SCHEMA_PATH.read_bytes())
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _plan_from_dict(data: Mapping[str, Any]) -> Plan:
    runs = {name: [PlannedRun(**run) for run in planned] for name, planned in data["runs"].items()}
    fields = ("name", "use_gpus", "specs", "data", "timing", "minutes", "checked", "sizes")
    return Plan(**{k: data[k] for k in fields}, runs=runs)


def spec_json(spec: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON of a spec (stable text: Snakemake compares params as text)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


__all__ = [
    "MACHINE_KEYS",
    "Plan",
    "PlanError",
    "PlannedRun",
    "axis_label",
    "canonical",
    "expand_experiment",
    "load_config",
    "mark_requirements",
    "method_defaults",
    "method_label",
    "normalize",
    "partial_runs",
    "plan",
    "plan_experiment",
    "requirement_key",
    "resolve",
    "run_path",
    "runnable",
    "schema_error",
    "spec_json",
]
