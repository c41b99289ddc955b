"""The documentation's shell commands (the ```bash blocks of README.md and of every page under docs/) cannot drift
from the code.

Every command of every ```bash block is listed in ``COMMANDS`` with what this file does with it:

- ``Run``: it runs for real, in this process the way ``python <script>`` runs it (``runpy`` with ``sys.argv``, so
  train.py goes through its own ``@hydra.main``), in a scratch directory, after the commands before it in its
  scenario (page order: README.md, then the site's pages in nav order, each top to bottom). Long runs are shortened by
  overrides the documentation names (``debug=smoke``, ``epochs=1``, ``--macs-only``, ...; a test checks that a page
  names each one), and each run is checked for what the page says it gives: files written, tables printed, epochs
  completed.
- ``Static``: it cannot run here (a GPU, ImageNet, Slurm, several nodes, the network, or many CPU minutes), and its
  entry says why. It is checked as far as that goes without running it: train.py overrides (also behind torchrun
  and srun) are composed by Hydra against the schema, every value of a sweep included, validated, and the model is
  built on the meta device; torchrun's and the scripts' arguments go through their own parsers (benchmark.py's
  models must resolve); pip extras must exist in pyproject.toml and pinned versions must be the installed ones.

A documented command that ``COMMANDS`` lacks, or an entry whose command is on no page any more, fails
``test_every_documented_command_is_classified``: a new or edited command forces a decision."""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import csv
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import re
import runpy
import shlex
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.distributed.run import get_args_parser as torchrun_parser

from mixerzoo.models import build_model
from mixerzoo.tools import benchmarking as benchmark
from mixerzoo.training import outputs, signals
from mixerzoo.training.config import register_configs, validate_config

register_configs()  # the train_schema entry of train.yaml, as train.py registers it on import
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def site_pages() -> tuple[Path, ...]:
    """The README, then the site's pages in the order of mkdocs.yml's nav (the reading order, so a command may use
    what a command on an earlier page made), then any page the nav does not list."""
    nav = re.findall(r":\s+([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = [ROOT / "docs" / page for page in nav if (ROOT / "docs" / page).is_file()]
    return (README, *pages, *sorted(set((ROOT / "docs").rglob("*.md")) - set(pages)))


# the pages whose commands are checked
PAGES = site_pages()
CONFIG_DIR = ROOT / "configs"
PYTHON = {"python", "python3", ".venv/bin/python"}
PIP = {"pip", ".venv/bin/pip"}
# the files the training page's table of run outputs lists for every training run
RUN_FILES = ("summary.json", "metrics.csv", "metrics.jsonl", "last.pth", "best.pth", "train.log", ".hydra/config.yaml")
# sweep presets that need an optional Hydra plugin: (its module, the config node only the plugin defines)
NEEDS_PLUGIN = {
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra.launcher."),
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra.sweeper."),
}


# --- the documented commands --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One simple command: ``text`` with whitespace collapsed, the ``page`` (relative to the repository) and ``line``
    it starts on, the shell ``variables`` assigned earlier in its block and the whole ``chain`` (``a && b``) it
    belongs to."""

    text: str
    line: int
    variables: tuple[tuple[str, str], ...] = ()
    chain: str = ""
    page: str = "README.md"


def split_line(line: str) -> list[str]:
    """``a && b  # note`` -> ``["a", "b"]``: the comment dropped, the ``&&`` chain split, quotes respected. Other
    control operators (``;``, ``|``, ``||``, ``&``) are not used on the pages; one there is an error."""
    parts, current, quote, i = [], "", None, 0
    while i < len(line):
        char = line[i]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (not current or current[-1].isspace()):
            break
        elif line.startswith("&&", i):
            parts.append(current)
            current, i = "", i + 2
            continue
        elif char in ";|&":
            raise ValueError(f"unsupported shell syntax {char!r} in a documented command: {line}")
        current += char
        i += 1
    parts.append(current)
    return [" ".join(part.split()) for part in parts if part.strip()]


def block_commands(block: str, first_line: int, page: str = "README.md") -> list[Command]:
    """The commands of one ```bash block: ``\\`` continuations joined, comments dropped (``#SBATCH`` lines are
    directives and kept), ``&&`` chains split, ``NAME=value`` lines remembered for the lines after them."""
    commands: list[Command] = []
    variables: dict[str, str] = {}
    logical, start = "", None
    for number, line in enumerate(block.splitlines(), first_line):
        start = start or number
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        text = (logical + line).strip()
        logical, start_line, start = "", start, None
        parts = [" ".join(text.split())] if text.startswith("#SBATCH") else split_line(text)
        for part in parts:
            commands.append(Command(part, start_line, tuple(variables.items()), " && ".join(parts), page))
            if re.fullmatch(r"[A-Za-z_]\w*=\S+", part):
                name, value = part.split("=", 1)
                variables[name] = value
    return commands


def documented_commands() -> list[Command]:
    """Every command of every ```bash block, page by page (``PAGES``), each page top to bottom."""
    commands = []
    for path in PAGES:
        text, page = path.read_text(), path.relative_to(ROOT).as_posix()
        for block in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S):
            commands += block_commands(block.group(1), text.count("\n", 0, block.start(1)) + 1, page)
    return commands


@dataclass(frozen=True)
class Invocation:
    """What a command runs: ``program`` (a script such as ``train.py``, ``-m <module>``, ``pip``, or any other
    executable), its ``args``, the ``env`` prefix and the ``launcher`` words before it (``srun``, ``torchrun ...``)."""

    program: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    launcher: tuple[str, ...] = ()


def invocation(command: Command) -> Invocation:
    # a placeholder such as ``<run id>`` is one word (for a shell it would be a redirection)
    words = shlex.split(re.sub(r"<[^<>]*>", lambda m: shlex.quote(m.group(0)), command.text))
    env = []
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        env.append(tuple(words.pop(0).split("=", 1)))
    if not words:
        return Invocation("", (), tuple(env))
    launcher = []
    if words[0] == "srun":
        launcher.append(words.pop(0))
        while words[0].startswith("-"):
            launcher.append(words.pop(0))
    if words[0] == "torchrun":  # torchrun's own parser splits its options from the script and its arguments
        parsed = torchrun_parser().parse_args(words[1:])
        launcher += words[: len(words) - 1 - len(parsed.training_script_args)]
        return Invocation(parsed.training_script, tuple(parsed.training_script_args), tuple(env), tuple(launcher))
    if words[0] in PYTHON:
        if words[1] == "-m":
            return Invocation(f"-m {words[2]}", tuple(words[3:]), tuple(env), tuple(launcher))
        return Invocation(words[1], tuple(words[2:]), tuple(env), tuple(launcher))
    if words[0] in PIP:
        return Invocation("pip", tuple(words[1:]), tuple(env), tuple(launcher))
    return Invocation(words[0], tuple(words[1:]), tuple(env), tuple(launcher))


def expand(word: str, command: Command) -> str:
    """``$NAME`` replaced by the value its block assigned earlier (other variables are left as they are)."""
    values = dict(command.variables)
    return re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), m.group(0)), word)


# --- running a script in this process ----------------------------------------------------------------------------
def run_script(program: str, args: Sequence[str]) -> tuple[int, str, str]:
    """``python <program> <args>`` in this process: its exit status, stdout and stderr. What a script may change
    for the whole process (torch threads, the root logger's handlers, Hydra's singletons) is put back."""
    root = logging.getLogger()
    handlers, level, threads, argv = root.handlers[:], root.level, torch.get_num_threads(), sys.argv
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        sys.argv = [program, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(ROOT / program), run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        err.write(f"\nSystemExit: {stop.code}")
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)
        sys.argv = argv
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return code, out.getvalue(), err.getvalue()


class _Parsed(Exception):
    pass


def parse_only(program: str, args: Sequence[str]) -> argparse.Namespace:
    """The script's own ``argparse`` parser applied to ``args``; the script stops right after parsing."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, *a: Any, **k: Any) -> argparse.Namespace:
        raise _Parsed(parse_args(self, *a, **k))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop):
        try:
            code, _, err = run_script(program, args)
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError(f"{program} {' '.join(args)}: exit {code} before its arguments parsed: {err[-2000:]}")


# --- composing a train.py command as Hydra would -------------------------------------------------------------------
def compose_train(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["output_dir=/tmp/unused", *overrides], return_hydra_config=True)


def _first_values(overrides: Sequence[str]) -> list[str]:
    """Each sweep (``a=1,2``, ``range(0,5)``) replaced by its first value: a composable job."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [next(_values(o)) if o.is_sweep_override() else o.input_line for o in parsed]


def _values(override: Any) -> Iterator[str]:
    key = override.get_key_element()
    if not override.is_sweep_override():
        return iter([f"{key}={override.get_value_element_as_str()}"])
    return (f"{key}={value}" for value in override.sweep_string_iterator())


def sweep_axes(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, list[str]]:
    """key -> its job overrides, combined as Hydra's basic sweeper does: the preset's ``hydra.sweeper.params``, then
    the command line (a key given on both takes the command line's values)."""
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *overrides])
    return {override.get_key_element(): list(_values(override)) for override in parsed}


BUILT: set[str] = set()  # the models check_job has built (a sweep's jobs share most)


def check_job(cfg: DictConfig) -> None:
    """A composed job as train.py would take it: ``validate_config``, every interpolation resolves, and the model
    builds (on the meta device; once per distinct model, class count, channels and size)."""
    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra")
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations read it
    try:
        validate_config(job)
        OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
        if job.data.num_classes is None:  # data=folder: the class count comes from the folders
            job.data.num_classes = 10
        key = OmegaConf.to_yaml(job.model) + f"{job.data.num_classes} {job.data.in_chans} {job.data.img_size}"
        if key not in BUILT:
            with torch.device("meta"):
                build_model(job.model, job.data)
            BUILT.add(key)
    finally:
        HydraConfig.instance().cfg = None


def is_group(key: str) -> bool:
    return "." not in key and (CONFIG_DIR / key.lstrip("+~")).is_dir()


def compose_command(args: Sequence[str]) -> tuple[int, DictConfig]:
    """A train.py command's overrides composed as Hydra runs them; every job is checked (a config group's values
    each composed, other swept keys set on the first job's typed config). Returns the job count and the first job."""
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    cfg = compose_train(_first_values(overrides))
    basic_sweeper = cfg.hydra.sweeper._target_.endswith(".BasicSweeper")
    multirun = multirun or cfg.hydra.mode == RunMode.MULTIRUN
    sweeps = [o for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    assert multirun or not sweeps, f"{sweeps[0].input_line}: a sweep needs -m (Hydra refuses it otherwise)"
    if not (multirun and basic_sweeper):
        check_job(cfg)
        return 1, cfg
    axes = sweep_axes(cfg, overrides)
    first = compose_train([values[0] for values in axes.values()])
    check_job(first)
    for key, values in axes.items():
        for value in values[1:]:
            if is_group(key):
                job = compose_train([value if k == key else v[0] for k, v in axes.items()])
            else:
                job = copy.deepcopy(first)
                override = OverridesParser.create().parse_override(value)
                OmegaConf.update(job, override.key_or_group, override.value(), merge=True)
            check_job(job)
    return math.prod(len(values) for values in axes.values()), first


def without_missing_plugins(args: Sequence[str]) -> list[str]:
    """Where a sweep preset's Hydra plugin is not installed (an optional extra), the preset and the keys only the
    plugin defines are left out; the rest of the command is still composed."""
    args = list(args)
    for preset, (module, node) in NEEDS_PLUGIN.items():
        if f"sweep={preset}" in args and not _installed(module):
            assert (CONFIG_DIR / "sweep" / f"{preset}.yaml").is_file()
            args = [a for a in args if a != f"sweep={preset}" and not a.startswith(node)]
    return args


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the hydra_plugins namespace itself is missing
        return False


# --- checks of what a real run gave ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """A command that ran: the scratch directory, its output, and the run directories (with ``.hydra/``) it made."""

    ws: Path
    stdout: str
    new_runs: list[Path]


Check = Callable[[Outcome], None]


def hydra_runs(ws: Path) -> set[Path]:
    return {p.parent for p in ws.rglob(".hydra")}


def _runs(outcome: Outcome, at: str | None, runs: int) -> list[Path]:
    if at is not None:
        return [outcome.ws / at]
    assert len(outcome.new_runs) == runs, outcome.new_runs
    return outcome.new_runs


def trained(
    epochs: int = 1,
    runs: int = 1,
    at: str | None = None,
    summary: dict | None = None,
    config: dict | None = None,
    files: Sequence[str] = RUN_FILES,
) -> Check:
    """Each run directory (``at``, else the ``runs`` new ones) holds the ``files`` (those the training page lists),
    ``epochs`` completed, the ``summary`` values, and the ``config`` values the command set."""

    def check(outcome: Outcome) -> None:
        for run in _runs(outcome, at, runs):
            missing = [name for name in files if not (run / name).is_file()]
            assert not missing, f"{run} lacks {missing}"
            result = json.loads((run / "summary.json").read_text())
            assert result["epochs_completed"] == epochs, result
            assert {k: result[k] for k in summary or {}} == (summary or {}), result
            cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
            assert {k: OmegaConf.select(cfg, k) for k in config or {}} == (config or {})

    return check


def evaluated(checkpoint: str) -> Check:
    def check(outcome: Outcome) -> None:
        (run,) = outcome.new_runs
        result = json.loads((run / "eval.json").read_text())
        assert result["checkpoint"] == checkpoint and 0 <= result["top1"] <= 100, result

    return check


def step_checkpoints(at: str, steps: Sequence[int]) -> Check:
    """``step_<N>.pth`` for the optimizer steps ``steps`` (N may be zero-padded)."""

    def check(outcome: Outcome) -> None:
        names = [p.name for p in (outcome.ws / at).glob("step_*.pth")]
        assert sorted(int(re.fullmatch(r"step_(\d+)\.pth", n)[1]) for n in names) == list(steps), names

    return check


def markdown_rows(text: str) -> list[list[str]]:
    """The rows of the Markdown table(s) in ``text``, without header separators."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line[:1] == "|"]
    return [row for row in rows if not all(set(c) <= set("-: ") for c in row)]


def table(rows: int, header: Sequence[str] | None = None, csv_file: str | None = None, csv_rows: int = 0) -> Check:
    """A Markdown table of ``rows`` rows (plus its header, ``header`` if given) printed; a CSV written if named."""

    def check(outcome: Outcome) -> None:
        printed = markdown_rows(outcome.stdout)
        assert len(printed) == rows + 1, outcome.stdout
        assert header is None or printed[0] == list(header), printed[0]
        if csv_file is not None:
            assert (outcome.ws / csv_file).read_text().count("\n") == csv_rows + 1

    return check


def wrote(*paths: str) -> Check:
    def check(outcome: Outcome) -> None:
        for path in map(outcome.ws.joinpath, paths):
            assert path.is_file() and path.stat().st_size > 0, path
            assert path.suffix != ".png" or path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path

    return check


def erf_maps(out: str, img_size: int, states: set[str]) -> Check:
    """tools/erf.py's JSON and figure: the maps of the image size, of every state (init, trained) and level."""

    def check(outcome: Outcome) -> None:
        result = json.loads((outcome.ws / out / "erf.json").read_text())
        assert result["img_size"] == img_size
        assert {r["state"] for r in result["records"]} == states
        assert all(len(r["map"]) == img_size and r["r50"] <= r["r90"] for r in result["records"])
        wrote(f"{out}/erf.png", f"{out}/erf.md")(outcome)

    return check


def pathfinder_cache(folder: str, files: int) -> Check:
    def check(outcome: Outcome) -> None:
        assert len(list((outcome.ws / folder).glob("*.npy"))) == files

    return check


def macs_of_timm_name_and_zoo_config_agree(outcome: Outcome) -> None:
    """``poolformerv2_s12`` (timm's) and ``config:poolformerv2_s12`` (the zoo's): the same params and MACs."""
    rows = markdown_rows(outcome.stdout)
    columns = rows[0]
    by_model: dict[str, list[tuple[str, str]]] = {}
    for row in rows[1:]:
        cells = dict(zip(columns, row))
        by_model.setdefault(cells["model"], []).append((cells["params_m"], cells["gmacs"]))
    assert set(by_model) == {"poolformerv2_s12", "config:poolformerv2_s12"} and len(by_model["poolformerv2_s12"]) == 2
    assert by_model["poolformerv2_s12"] == by_model["config:poolformerv2_s12"]


def grid_bound_macs(outcome: Outcome) -> None:
    """Both grid-bound mixers at 224/448/896, rebuilt per size; random mixing grows faster than the token count."""
    rows = benchmark_csv(outcome.ws / "docs/pathfinder/gridbound_macs.csv")
    assert [(r["model"].split("=")[-1], r["img_size"]) for r in rows] == [
        (m, s) for s in ("224", "448", "896") for m in ("random", "strip_mlp")
    ]
    random_macs = [float(r["gmacs"]) for r in rows if r["model"].endswith("random")]
    assert random_macs[2] / random_macs[0] > 16  # 16x the tokens; quadratic in them


def benchmark_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_of(*checks: Check) -> Check:
    def check(outcome: Outcome) -> None:
        for one in checks:
            one(outcome)

    return check


# --- checks of commands that do not run here ----------------------------------------------------------------------
StaticCheck = Callable[[Command, Path], None]


def in_ci_script(command: Command, _tmp: Path) -> None:
    """CI (``.ci/run``) runs this very command."""
    assert command.text in (ROOT / ".ci" / "run").read_text()


def run_by_test(path: str, name: str, *words: str) -> StaticCheck:
    """Another test runs the command (``words`` in its call), so it is not run twice."""

    def check(command: Command, _tmp: Path) -> None:
        tree = ast.parse((ROOT / path).read_text())
        (function,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
        constants = [n.value for n in ast.walk(function) if isinstance(n, ast.Constant)]
        assert all(word in constants for word in words), (name, words)
        assert all(word in shlex.split(command.text) for word in words)

    return check


def pythonpath_is_the_pip_target(command: Command, _tmp: Path) -> None:
    """``pip install --target D ... && PYTHONPATH=D python ...``: the script sees what pip put there."""
    target = shlex.split(command.chain)[shlex.split(command.chain).index("--target") + 1]
    assert dict(invocation(command).env)["PYTHONPATH"] == target


def carried_wheels_complete_hydra(command: Command, _tmp: Path) -> None:
    """The wheels the GPU-check page downloads, plus what torch and timm install, are all that hydra-core needs."""
    carried = {
        word.split("==")[0].lower()
        for other in documented_commands()
        if " ".join(shlex.split(other.text)[:4]).endswith(("pip download", "pip wheel"))
        for word in shlex.split(other.text)
        if "==" in word
    }
    there = requirement_closure(["torch", "timm"])
    missing = requirement_closure(["hydra-core"]) - carried - there
    assert not missing, f"{command.text}: hydra-core also needs {missing}"
    for name in carried:  # "all three are pure Python"
        files = importlib.metadata.files(name) or []
        assert not [f for f in files if f.suffix in (".so", ".pyd")], name


def requirement_closure(names: Sequence[str]) -> set[str]:
    """The installed distributions ``names`` need, themselves included (extras and foreign markers left out)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name.lower().replace("_", "-"))
    return seen


def slurm_signal_is_handled(command: Command, _tmp: Path) -> None:
    """``--signal=USR1@300``: train.py checkpoints and stops on that signal, and names it in summary.json."""
    (option,) = [w for w in shlex.split(command.text) if w.startswith("--signal=")]
    name = "SIG" + option.split("=")[1].split("@")[0]
    assert getattr(signal, name) in signals.STOP_SIGNALS, f"train.py does not stop on {name}"
    signals.on_stop_signal(getattr(signal, name), None)
    try:
        assert signals.received() == name
    finally:
        signals.clear()


def variable_is_used(command: Command, _tmp: Path) -> None:
    name = command.text.split("=")[0]
    later = [
        c
        for c in documented_commands()
        if c.page == command.page and c.line > command.line and (name, command.text.split("=")[1]) in c.variables
    ]
    assert any(f"${name}" in c.text for c in later), f"${name} is not used after line {command.line}"


def grep_finds_the_stop_signal(command: Command, tmp_path: Path) -> None:
    """The pattern matches summary.json as train.py writes it after a SIGUSR1 (and not after a plain finish)."""
    pattern = shlex.split(command.text)[2]
    outputs.write_json(str(tmp_path / "stopped.json"), {"epochs_completed": 3, "stopped_by": "SIGUSR1"}, "summary")
    outputs.write_json(str(tmp_path / "finished.json"), {"epochs_completed": 3, "stopped_by": None}, "summary")
    assert pattern in (tmp_path / "stopped.json").read_text()
    assert pattern not in (tmp_path / "finished.json").read_text()


# --- what is done with each command -------------------------------------------------------------------------------
SCENARIOS = ("train", "sweep", "pathfinder", "benchmark")


@dataclass(frozen=True)
class Run:
    """Runs for real in ``scenario``'s scratch directory, after that scenario's earlier commands. ``extra`` words are
    appended and ``change`` replaces the page's words: only overrides and flags the pages document, to shorten the run
    or to fix a directory later commands read. ``inputs``: a placeholder of the page -> the directory (a glob in the
    scratch directory) an earlier command wrote. ``setup``: makes what the page tells the reader to bring (their own
    image folder) in the scratch directory before the command runs."""

    scenario: str
    check: Check
    extra: tuple[str, ...] = ()
    change: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None

    def args(self, invoked: Invocation, ws: Path) -> list[str]:
        args = [self.change.get(a, a) for a in invoked.args]
        for placeholder, pattern in self.inputs.items():
            (found,) = [p.relative_to(ws).as_posix() for p in ws.glob(pattern)]
            args = [a.replace(placeholder, found) for a in args]
        return [*args, *self.extra]


@dataclass(frozen=True)
class Static:
    """Not run here, for ``reason``; checked without running it: the checks of its program (train.py composed,
    arguments parsed, pip extras and pins), ``jobs`` (a sweep's job count the page states), ``sweep_dir`` (the
    folder its jobs go to, which later commands read) and ``check``."""

    reason: str
    check: StaticCheck | None = None
    jobs: int | None = None
    sweep_dir: str | None = None


def image_folder(root: str, classes: Sequence[str] = ("cat", "dog")) -> Callable[[Path], None]:
    """The ImageFolder layout the own-images page shows: ``<root>/{train,val}/<class>/*.png``, 3 images a class."""

    def make(ws: Path) -> None:
        from PIL import Image

        generator = torch.Generator().manual_seed(0)
        for split in ("train", "val"):
            for name in classes:
                (ws / root / split / name).mkdir(parents=True)
                for i in range(3):
                    pixels = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=generator)
                    Image.fromarray(pixels.numpy()).save(ws / root / split / name / f"{i:03d}.png")

    return make


def path_exists(word: str) -> StaticCheck:
    """The command names a file of the repository (a test file, a config) that exists."""

    def check(command: Command, _tmp: Path) -> None:
        assert word in shlex.split(command.text) and (ROOT / word).exists(), word

    return check


def fast_lane_is_set_up(command: Command, _tmp: Path) -> None:
    """``-m "not slow" -n auto``: the ``slow`` marker is registered and pytest-xdist (``-n``) is in the dev extra."""
    words = shlex.split(command.text)
    assert words[words.index("-m", 2) + 1] == "not slow" and "-n" in words
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"slow: ', pyproject), "the slow marker is not registered"
    dev = re.search(r"^dev = \[(.*?)\]", pyproject, re.M | re.S)
    assert dev and "pytest-xdist" in dev.group(1), "pytest-xdist is not in the dev extra"


def configured_in_pyproject(section: str) -> StaticCheck:
    def check(command: Command, _tmp: Path) -> None:
        assert f"[{section}]" in (ROOT / "pyproject.toml").read_text(), section

    return check


def mkdocs_site_configured(command: Command, _tmp: Path) -> None:
    """mkdocs.yml is in the repository root and every page its nav names exists, or is one of the pages other
    work adds (listed in its nav already)."""
    text = (ROOT / "mkdocs.yml").read_text()
    assert "docs_dir: docs" in text and "mkdocstrings" in text
    for page in re.findall(r":\s+([\w/.-]+\.md)\s*$", text, re.M):
        assert (ROOT / "docs" / page).is_file() or page in PAGES_FROM_ELSEWHERE, page


# pages the nav lists that other work writes; until they land, `mkdocs build --strict` needs stand-ins for them
PAGES_FROM_ELSEWHERE = {"results/capability-screen.md", "gpu-check.md", "timm.md", "benchmarks/ssm-kernels.md"}
# commands that such a page is to hold (they were on the training pages before): their entries stay until it lands
AWAITED: dict[str, set[str]] = {}  # page -> commands another change adds with the page

SMOKE = ("debug=smoke",)
PATHFINDER_QUICK = (
    "epochs=1",
    "batch_size=8",
    "limit_train_batches=2",
    "limit_val_batches=1",
    "data.pathfinder_train_size=16",
    "data.pathfinder_val_size=16",
)
GPU = "needs a GPU"
IMAGENET = "needs ImageNet at data.root and GPU-days"
SWEEP = "multirun of the 'run/compose' kind below"
SMOKE_SWEEP = "multirun/smoke/*/*"  # where the shortened sweep (debug=smoke sets name=smoke) writes its jobs

COMMANDS: dict[str, Run | Static] = {
    # Quick start and the main job
    # the GPU check (docs/gpu-check.md): the device machine's commands, which the simulated device run repeats
    "python3 -m pip download --no-deps --only-binary=:all: -d .whl hydra-core==1.3.8 omegaconf==2.3.1": Static(
        "the network; the simulated device run builds these wheels from the installed packages"
    ),
    "python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3": Static(
        "the network; the simulated device run builds this wheel from the installed package"
    ),
    "python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl": Static(
        "needs the wheels the two lines above download; the simulated device run installs its own the same way",
        carried_wheels_complete_hydra,
    ),
    'PYTHONPATH=/tmp/site python3 tools/gpu_check.py --part 1 --out "$OUT"': Static(
        f"{GPU}; run word for word in a fresh copy by tests/tools/test_gpu_check.py on the CPU"
    ),
    'PYTHONPATH=/tmp/site python3 tools/gpu_check.py --part 2 --out "$OUT"': Static(
        f"{GPU}; run word for word in a fresh copy by tests/tools/test_gpu_check.py on the CPU"
    ),
    'ln -sfn "$PWD" /tmp/pkg/mixerzoo': Static("run word for word in a fresh copy by tests/tools/test_gpu_check.py"),
    "mkdir -p /tmp/pkg": Static("run word for word in a fresh copy by tests/tools/test_gpu_check.py"),
    "PYTHONPATH=/tmp/site:/tmp/pkg python3 -m pytest -m cuda tests/test_cuda.py": Static(
        f"{GPU}; the CPU stand-ins of these tests are tests/test_cuda_helpers.py"
    ),
    "python3 tools/gpu_check.py --device cpu --quick --out /tmp/gpu_check": Static(
        "run by tests/tools/test_gpu_check.py as on the GPU machine (a copy, wheels, python3; not twice)"
    ),
    "python3 -m venv .venv": Static("makes a virtual environment; .ci/run does, in every CI run", in_ci_script),
    '.venv/bin/pip install -e ".[dev]"': Static("installs from the network; .ci/run does", in_ci_script),
    ".venv/bin/python train.py": Run("train", trained(), SMOKE),
    ".venv/bin/python -m pytest -n auto": Static("the test suite itself; .ci/run runs it", in_ci_script),
    'pip install -e ".[dev]"': Static("installs from the network (the same as .ci/run's)"),
    "python train.py": Run("train", trained(config={"model.mixer": "pooling", "data.name": "digits"}), SMOKE),
    # your own images
    "python train.py data=folder data.root=my_images model=metaformer_s12 aug=deit data.img_size=224 epochs=100": Run(
        "train",
        trained(config={"data.name": "folder", "data.root": "my_images", "model.mixer": "pooling"}),
        ("batch_size=4", "limit_train_batches=2", "limit_val_batches=1", "data.num_workers=0"),
        {"data.img_size=224": "data.img_size=32", "epochs=100": "epochs=1"},
        setup=image_folder("my_images"),
    ),
    # a mixer and its options
    "python train.py model.mixer=attention": Run("train", trained(config={"model.mixer": "attention"}), SMOKE),
    "python train.py 'model.mixer={name:attention,head_dim:16}'": Run(
        "train", trained(config={"model.mixer": {"name": "attention", "head_dim": 16}}), SMOKE
    ),
    "python train.py 'model.mixer=[pooling,pooling,{name:attention,head_dim:16}]'": Run(
        "train",
        trained(config={"model.mixer": ["pooling", "pooling", {"name": "attention", "head_dim": 16}]}),
        SMOKE,
    ),
    "python train.py model=metaformer_s12 'model.mixer={name:aff,inner_skip:true}' data.img_size=64 epochs=1": Run(
        "train",
        trained(config={"model.mixer": {"name": "aff", "inner_skip": True}, "data.img_size": 64}),
        SMOKE,
    ),
    # Configuration examples
    "python train.py model.mixer=sepconv epochs=10": Run(
        "train", trained(config={"model.mixer": "sepconv"}), SMOKE, {"epochs=10": "epochs=1"}
    ),
    "python train.py model=timm model.name=resnet18": Run("train", trained(config={"model.name": "resnet18"}), SMOKE),
    "python train.py data=fake data.img_size=224 model=poolformerv2_s12 epochs=1": Run(
        "train",
        trained(config={"data.name": "fake", "data.img_size": 224, "model.name": "poolformerv2_s12"}),
        ("batch_size=2", "limit_train_batches=2", "limit_val_batches=1", "data.num_workers=0"),
    ),
    "python train.py aug=deit data.in_chans=3 data.mean=[0.5,0.5,0.5] data.std=[0.5,0.5,0.5]": Run(
        "train", trained(config={"aug.auto_augment": "rand-m9-mstd0.5-inc1", "data.in_chans": 3}), SMOKE
    ),
    "python train.py runtime.precision=bf16 ema.enabled=true optim.clip_grad=1.0": Run(
        "train", trained(summary={"precision": "bf16"}, config={"ema.enabled": True, "optim.clip_grad": 1.0}), SMOKE
    ),
    # ImageNet, torchrun, Slurm
    "python train.py experiment=caformer_s18 data.root=/path/to/imagenet optim.grad_accum_steps=32": Static(IMAGENET),
    "torchrun --standalone --nproc_per_node=8 train.py experiment=caformer_s18 data.root=/path/to/imagenet": Static(
        f"8 GPUs; {IMAGENET}"
    ),
    "torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=$HEAD_NODE:29400 --rdzv-id=$JOB_ID "
    "train.py experiment=caformer_b36 data.root=/path/to/imagenet optim.grad_accum_steps=1 "
    "hydra.run.dir=/shared/runs/caformer_b36": Static(f"4 nodes of 8 GPUs; {IMAGENET}"),
    "#SBATCH --nodes=1 --ntasks-per-node=1 --gpus-per-node=8 --signal=USR1@300 --requeue": Static(
        "a Slurm directive", slurm_signal_is_handled
    ),
    "export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1": Static(
        "the torchrun agent's environment in a Slurm job; tests/training/test_chaos.py sends SIGUSR1 to every process"
    ),
    "RUN=/shared/runs/caformer_s18": Static(
        "a shell variable for the lines below (expanded where composed)", variable_is_used
    ),
    "srun torchrun --standalone --nproc_per_node=8 train.py experiment=caformer_s18 data.root=/imagenet resume=auto "
    "hydra.run.dir=$RUN": Static(f"Slurm, 8 GPUs; {IMAGENET}"),
    'grep -q \'"stopped_by": "SIGUSR1"\' $RUN/summary.json': Static(
        "reads a Slurm job's summary.json", grep_finds_the_stop_signal
    ),
    "scontrol requeue $SLURM_JOB_ID": Static("Slurm"),
    # the capability screen
    "python train.py sweep=probes": Static(
        "120 jobs, about 120 CPU-minutes; tests/training/test_probes.py composes the sweep for every mixer", jobs=120
    ),
    "python tools/screen.py multirun/probes/<run id> --out docs/results/screen": Static(
        "reads a finished screen; tests/tools/test_screen.py runs its tables, checks and rho on made-up results"
    ),
    # the chaos script
    "python tools/chaos.py": Static(
        "torchrun with faults, minutes on 2 cores; tests/training/test_chaos.py runs a small instance (slow lane)"
    ),
    "python tools/chaos.py --kills 12 --epochs 4 --steps-per-epoch 24 --seed 3 --out outputs/chaos12 -- "
    "aug.re_prob=0.25 aug.mixup=0.8 aug.cutmix=1.0 ema.enabled=true +model.drop_path_rate=0.1": Static(
        "7 minutes of torchrun with 13 faults; its measured result is on the page"
    ),
    # resume, evaluation, fine-tuning
    "python train.py epochs=1 hydra.run.dir=outputs/run1": Run("train", trained(at="outputs/run1"), SMOKE),
    "python train.py epochs=2 resume=auto hydra.run.dir=outputs/run1": Run(
        "train",
        trained(epochs=2, at="outputs/run1"),
        SMOKE,  # "continues at epoch 2 (epochs_completed == 2)"
    ),
    "python train.py resume=outputs/run1/last.pth hydra.run.dir=outputs/run1b": Run(
        "train",
        # one epoch more than run1's two; best.pth stays in outputs/run1 unless the new epoch beats run1's best
        trained(epochs=3, at="outputs/run1b", files=[f for f in RUN_FILES if f != "best.pth"]),
        (*SMOKE, "epochs=3"),
    ),
    "python train.py checkpoint_every_steps=500 hydra.run.dir=outputs/run2": Run(
        "train",
        all_of(trained(at="outputs/run2"), step_checkpoints("outputs/run2", [1, 2])),
        SMOKE,
        {"checkpoint_every_steps=500": "checkpoint_every_steps=1"},  # the smoke epoch has 2 steps
    ),
    "python train.py eval_only=true checkpoint=outputs/run1/best.pth": Run(
        "train", evaluated("outputs/run1/best.pth"), SMOKE
    ),
    "python train.py eval_only=true resume=outputs/run1/last.pth ema.enabled=true": Run(
        "train", evaluated("outputs/run1/last.pth"), SMOKE
    ),
    "python train.py eval_only=true experiment=caformer_s18 data.root=/imagenet checkpoint=caformer_s18.pth": Static(
        f"{IMAGENET} and the released weights"
    ),
    "python train.py data=folder data.root=/my_data model=caformer_s18 checkpoint=caformer_s18_in1k.pth epochs=30": (
        Static("needs a dataset at /my_data and the released ImageNet weights")
    ),
    # sweeps
    "python train.py -m model.mixer=pooling,identity,sepconv,attention seed=0,1,2": Run(
        "sweep",
        trained(runs=4),
        SMOKE,
        {"model.mixer=pooling,identity,sepconv,attention": "model.mixer=pooling,sepconv", "seed=0,1,2": "seed=0,1"},
    ),
    "python train.py sweep=mixers": Static("18 jobs of about a minute each", jobs=18),
    "python train.py sweep=seeds": Static("5 jobs of about a minute each", jobs=5),
    "python train.py sweep=models data.root=/imagenet": Static(IMAGENET, jobs=3),
    "python train.py -m sweep=slurm experiment=caformer_s18,convformer_s18 data.root=/imagenet "
    "hydra.launcher.partition=gpu": Static(f"Slurm; {IMAGENET}", jobs=2),
    "python train.py sweep=optuna hydra.sweeper.n_trials=20": Static("20 trials of the default job; optional plugin"),
    # benchmarks
    "python benchmark.py poolformerv2_s12 config:poolformerv2_s12 --img-size 224 448": Run(
        "benchmark", macs_of_timm_name_and_zoo_config_agree, ("--macs-only", "--csv", "outputs/benchmark.csv")
    ),
    "python benchmark.py --preset mixers": Static("every mixer at 224/448/896 px, timed: CPU hours"),
    "python benchmark.py --preset mixers --macs-only": Static("about 1.5 min (tools/readme_tables.py --check counts)"),
    "python benchmark.py --preset zoo-vs-timm": Static("six models timed at 224 px in subprocesses: minutes"),
    "python benchmark.py 'config:*former_s12' 'randformer_s*' --thorough --threads 2 --csv results.csv": Static(
        "a dozen models timed 15 times: many minutes"
    ),
    "python benchmark.py --preset mixers --device cuda --batch-size 128 --precision amp_bf16 --channels-last "
    "--compile": Static(GPU),
    "python train.py sweep=mixers_s12 data.root=/path/to/imagenet": Static(IMAGENET, sweep_dir="multirun/train/"),
    "python collect_results.py multirun/train/<run id>": Run(
        "sweep", table(rows=4), inputs={"multirun/train/<run id>": SMOKE_SWEEP}
    ),
    # Pathfinder
    "python train.py data=pathfinder aug=none model.block.norm=batchnorm model.block.norm_bias=true": Run(
        "pathfinder",
        trained(at="outputs/pathfinder32", config={"data.name": "pathfinder", "model.block.norm": "batchnorm"}),
        (*PATHFINDER_QUICK, "hydra.run.dir=outputs/pathfinder32"),
    ),
    "python train.py data=pathfinder aug=none model.block.norm=batchnorm model.block.norm_bias=true data.img_size=64 "
    "data.pathfinder_difficulty=medium data.cache_dir=outputs/pathfinder_cache": Run(
        "pathfinder",
        all_of(trained(config={"data.img_size": 64}), pathfinder_cache("outputs/pathfinder_cache", files=2)),
        PATHFINDER_QUICK,
    ),
    "python tools/plots.py samples --out docs/pathfinder/samples.png": Run(
        "pathfinder", wrote("docs/pathfinder/samples.png")
    ),
    "python train.py sweep=pathfinder data.img_size=32": Static(
        "20 jobs of 1-11 min on 2 cores", jobs=20, sweep_dir="multirun/pathfinder/"
    ),
    "python train.py sweep=pathfinder": Static("40 jobs, 5-6 h on 2 cores", jobs=40, sweep_dir="multirun/pathfinder/"),
    "python collect_results.py multirun/pathfinder/<run id> --by-mixer --csv results.csv": Run(
        "sweep",
        table(rows=2, csv_file="results.csv", csv_rows=2),  # one CSV row per mixer
        inputs={"multirun/pathfinder/<run id>": SMOKE_SWEEP},
    ),
    "python collect_results.py multirun/pathfinder/<run id> --columns mixer seed train_img_s final_top1 wall_min": Run(
        "sweep",
        table(rows=4, header=["mixer", "seed", "train_img_s", "final_top1", "wall_min"]),
        inputs={"multirun/pathfinder/<run id>": SMOKE_SWEEP},
    ),
    "python tools/erf.py --run multirun/pathfinder/<run id> --difficulty hard --out docs/pathfinder/erf32": Run(
        "pathfinder",
        erf_maps("docs/pathfinder/erf32", 32, {"init", "trained"}),
        ("--mixers", "pooling", "--images", "2"),
        inputs={"multirun/pathfinder/<run id>": "outputs/pathfinder32"},
    ),
    "python tools/erf.py --img-size 64 --images 16 --override model.block.norm=batchnorm model.block.norm_bias=true": (
        Run("pathfinder", erf_maps("outputs/erf", 64, {"init"}), ("--mixers", "pooling", "--images", "2"))
    ),
    "python train.py sweep=pathfinder_gpu": Static(f"{GPU} (hours)", sweep_dir="multirun/pathfinder_gpu/"),
    "python collect_results.py multirun/pathfinder_gpu/<run id> --by-mixer --csv pathfinder128.csv": Run(
        "sweep",
        table(rows=2, csv_file="pathfinder128.csv", csv_rows=2),
        inputs={"multirun/pathfinder_gpu/<run id>": SMOKE_SWEEP},
    ),
    "python tools/plots.py accuracy pathfinder128.csv --out docs/pathfinder/accuracy128.png": Run(
        "sweep", wrote("docs/pathfinder/accuracy128.png")
    ),
    "python tools/erf.py --run multirun/pathfinder_gpu/<run id> --img-size 128 --images 16 --out "
    "docs/pathfinder/erf128": Static("needs the Pathfinder-128 run of the GPU sweep"),
    "python collect_results.py multirun/pathfinder/<run id> --csv docs/pathfinder/pathfinder32_results.csv": Run(
        "sweep",
        table(rows=4, csv_file="docs/pathfinder/pathfinder32_results.csv", csv_rows=4),
        inputs={"multirun/pathfinder/<run id>": SMOKE_SWEEP},
    ),
    "python tools/plots.py accuracy docs/pathfinder/pathfinder32_results.csv --out docs/pathfinder/accuracy32.png": Run(
        "sweep", wrote("docs/pathfinder/accuracy32.png")
    ),
    "python tools/plots.py curves multirun/pathfinder/<follow-up run id> --out docs/pathfinder/curves32_long.png": Run(
        "sweep",
        wrote("docs/pathfinder/curves32_long.png"),
        inputs={"multirun/pathfinder/<follow-up run id>": SMOKE_SWEEP},
    ),
    "python benchmark.py --preset mixers --no-train --no-latency --runs 1 --warmup 1 --threads 1 --max-gmacs 35 --csv "
    "docs/pathfinder/mixers_timing.csv": Static("times every mixer up to 35 GMACs: many CPU minutes"),
    "python benchmark.py 'config:metaformer_s12@mixer=random' 'config:metaformer_s12@mixer=strip_mlp' --img-size 224 "
    "448 896 --macs-only --rebuild-per-resolution --reference none --csv docs/pathfinder/gridbound_macs.csv": Run(
        "benchmark", grid_bound_macs
    ),
    # the development loop and the documentation site
    ".venv/bin/python -m pytest tests/mixers/test_mixers.py -x -q": Static(
        "one test file of this suite", path_exists("tests/mixers/test_mixers.py")
    ),
    '.venv/bin/python -m pytest -m "not slow" -n auto': Static(
        "the suite's fast lane (this file is part of it)", fast_lane_is_set_up
    ),
    ".venv/bin/ruff format .": Static(
        "rewrites files; the configuration it reads", configured_in_pyproject("tool.ruff")
    ),
    ".venv/bin/ruff check .": Static("lint; the configuration it reads", configured_in_pyproject("tool.ruff.lint")),
    ".venv/bin/mkdocs build --strict": Static("CI builds the site; .ci/run runs this", in_ci_script),
    ".venv/bin/mkdocs serve": Static("a server that runs until stopped", mkdocs_site_configured),
    "python tools/plots.py cost docs/pathfinder/gridbound_macs.csv docs/pathfinder/mixers_timing.csv --out "
    'docs/pathfinder/cost.png --note "2 shared CPU cores, 1 thread, one run each: noisy"': Run(
        "benchmark",
        wrote("docs/pathfinder/cost.png"),  # with the committed mixers_timing.csv
    ),
}


# --- tests ------------------------------------------------------------------------------------------------------------
def test_commands_are_split_at_chains_continuations_and_comments() -> None:
    block = (
        "# a comment line\n"
        "RUN=/runs/x\n"
        "A=1 python train.py a=1 \\\n"
        "    b='x # y' hydra.run.dir=$RUN  # a comment\n"
        'pip install -e ".[dev]" && python tools/plots.py cost a.csv --note "p & q"\n'
        "#SBATCH --nodes=1\n"
    )
    commands = block_commands(block, 10)
    assert [(c.text, c.line) for c in commands] == [
        ("RUN=/runs/x", 11),
        ("A=1 python train.py a=1 b='x # y' hydra.run.dir=$RUN", 12),
        ('pip install -e ".[dev]"', 14),
        ('python tools/plots.py cost a.csv --note "p & q"', 14),
        ("#SBATCH --nodes=1", 15),
    ]
    assert expand("hydra.run.dir=$RUN", commands[1]) == "hydra.run.dir=/runs/x"
    assert invocation(commands[1]) == Invocation("train.py", ("a=1", "b=x # y", "hydra.run.dir=$RUN"), (("A", "1"),))
    assert invocation(commands[2]) == Invocation("pip", ("install", "-e", ".[dev]"))
    with pytest.raises(ValueError, match="unsupported"):
        split_line("python train.py | tee log")
    nodes = Command("srun torchrun --nnodes=2 --nproc_per_node=8 train.py epochs=1", 1)
    assert invocation(nodes) == Invocation(
        "train.py", ("epochs=1",), (), ("srun", "torchrun", "--nnodes=2", "--nproc_per_node=8")
    )


def test_composing_rejects_a_wrong_train_command() -> None:
    """The static check fails on what a documented command could get wrong: a misspelt key, an unknown option, a value
    training refuses, an unregistered mixer in one value of a sweep; and it counts a sweep's jobs."""
    for args, error in [
        (["optim.lrr=0.1"], "optim.lrr"),
        (["experiment=caformer_s81"], "experiment/caformer_s81"),
        (["epochs=0"], "epochs=0"),
        (["-m", "model.mixer=pooling,sepconvv"], "sepconvv"),
    ]:
        with pytest.raises(Exception) as info:
            compose_command(args)
        assert error in "".join(traceback.format_exception(info.value)), args
    assert compose_command(["-m", "model.mixer=pooling,sepconv", "seed=0,1,2"])[0] == 6


def test_every_documented_command_is_classified() -> None:
    """Each documented command has an entry in COMMANDS and each entry a documented command: add or edit a command
    on a page, and say here whether it runs (shortened how, checked how) or why not (Static)."""
    commands = documented_commands()
    documented = {c.text for c in commands}
    assert len(documented) >= 60
    where = {c.text: f"{c.page}:{c.line}" for c in reversed(commands)}
    missing = sorted(f"{where[text]}: {text}" for text in documented - set(COMMANDS))
    assert not missing, f"documented commands not in {Path(__file__).name} COMMANDS (add Run or Static):\n" + (
        "\n".join(missing)
    )
    awaited = {text for page, texts in AWAITED.items() if not (ROOT / "docs" / page).exists() for text in texts}
    stale = sorted(set(COMMANDS) - documented - awaited)
    assert not stale, "COMMANDS entries on no page any more:\n" + "\n".join(stale)
    assert {e.scenario for e in COMMANDS.values() if isinstance(e, Run)} == set(SCENARIOS)
    assert all(e.reason for e in COMMANDS.values() if isinstance(e, Static))


def test_shortening_overrides_are_documented() -> None:
    """Every override and flag a Run adds or changes is one the documentation itself names."""
    text = "\n".join(path.read_text() for path in PAGES)
    words = {w for e in COMMANDS.values() if isinstance(e, Run) for w in (*e.extra, *e.change.values())}
    names = {w if w.startswith("debug=") else w.split("=")[0] for w in words if "=" in w or w.startswith("-")}
    assert {"debug=smoke", "epochs", "--macs-only", "--mixers"} <= names
    assert sorted(n for n in names if f"`{n}" not in text and f" {n}" not in text) == []


STATIC = [c for c in {c.text: c for c in documented_commands()}.values() if isinstance(COMMANDS.get(c.text), Static)]


@pytest.mark.parametrize("command", STATIC, ids=[f"{c.page}:{c.line} {c.text[:50]}" for c in STATIC])
def test_documented_command_that_cannot_run_here_is_checked(
    command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = COMMANDS[command.text]
    assert isinstance(entry, Static)
    invoked = invocation(command)
    if invoked.program == "train.py":
        args = without_missing_plugins([expand(a, command) for a in invoked.args])
        jobs, cfg = compose_command(args)
        assert entry.jobs is None or jobs == entry.jobs, f"{jobs} jobs"
        assert entry.sweep_dir is None or cfg.hydra.sweep.dir.startswith(entry.sweep_dir), cfg.hydra.sweep.dir
    elif invoked.program == "benchmark.py":
        if "cuda" in invoked.args:  # the arguments of a GPU run, parsed as on a GPU machine
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        parsed = benchmark.build_parser().parse_args(list(invoked.args))
        cfg = benchmark.config_from_args(parsed)  # every model resolves
        assert cfg.models and cfg.img_sizes
        for spec in benchmark.parse_models(parsed.models):  # the overrides of a zoo config the command names apply
            if spec.kind == "config" and spec.overrides:
                with torch.device("meta"):
                    benchmark.build_model(spec, 224)
    elif invoked.program.endswith(".py"):
        parse_only(invoked.program, invoked.args)
    elif invoked.program == "pip":
        check_pip(invoked.args)
    if entry.check is not None:
        entry.check(command, tmp_path)


def check_pip(args: Sequence[str]) -> None:
    """``.[extra]`` names an extra pyproject.toml defines; ``name==version`` is the version installed here."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([\w-]+)\s*=", section, re.M))
    for word in args[1:]:
        if word.startswith(".["):
            assert set(word[2:-1].split(",")) <= extras, (word, extras)
        if "==" in word:
            name, version = word.split("==")
            assert importlib.metadata.version(name) == version, word


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_documented_commands_run(scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario's documented commands in page order, each in this process as ``python <script>`` would run it,
    shortened as its entry says; each exits 0 and gives what its check expects."""
    commands = [c for c in {c.text: c for c in documented_commands()}.values() if isinstance(COMMANDS.get(c.text), Run)]
    commands = [c for c in commands if COMMANDS[c.text].scenario == scenario]
    assert commands
    (tmp_path / "docs" / "pathfinder").mkdir(parents=True)  # the repository's layout, with its committed timings
    shutil.copy(ROOT / "docs" / "pathfinder" / "mixers_timing.csv", tmp_path / "docs" / "pathfinder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    for command in commands:
        entry = COMMANDS[command.text]
        invoked = invocation(command)
        args = entry.args(invoked, tmp_path)
        if entry.setup is not None:
            entry.setup(tmp_path)
        before = hydra_runs(tmp_path)
        code, out, err = run_script(invoked.program, args)
        assert code == 0, f"{command.text} -> {args}: exit {code}\n{err[-3000:]}"
        entry.check(Outcome(tmp_path, out, sorted(hydra_runs(tmp_path) - before)))
