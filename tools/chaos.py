"""Kill a training run again and again, resume it every time, and check that it ends where an uninterrupted run ends.

    python tools/chaos.py                                    # 3 SIGKILLs + 1 SIGTERM, torchrun x 2, 1 loader worker
    python tools/chaos.py --kills 12 --epochs 3 --out outputs/chaos12
    python tools/chaos.py --processes 1 --workers 0 -- aug.re_prob=0.25 aug.mixup=0.8 ema.enabled=true

First a reference run trains to the end undisturbed (``<out>/reference``). Then the same command with
``resume=auto`` into ``<out>/chaos`` is started again and again; each attempt is interrupted by one fault once it
has trained ``--min-steps`` steps beyond the step it resumed from (plus a random delay of up to ``--jitter``
seconds), in a random order drawn from ``--seed``:

- ``--kills`` SIGKILLs, each to a random target: every process of the job at once (a node lost, an OOM kill of the
  job), one rank (``torchrun`` then stops the others), or one data-loader worker (the rank fails on it);
- ``--sigterm`` stop signals (one by default): SIGTERM (``--stop-signal SIGUSR1`` for Slurm's ``--signal=USR1``) to
  the ``torchrun`` agent (to the training process with ``--processes 1``), as a scheduler's preemption sends it, or
  with ``--stop-target all`` to every process of the job at once, loader workers included, as Slurm signals a job
  step: the ranks must write ``last.pth`` and ``summary.json`` (``stopped_by``) and exit. The agent forwards
  SIGUSR1 only when it is listed in ``TORCHELASTIC_SIGNALS_TO_HANDLE``, which this script sets.

Then a last attempt trains to the end. The script prints, per fault, the step the run had reached, the step the next
attempt resumed from and the steps lost, and compares the final ``last.pth`` of both runs (model, EMA): the largest
absolute difference of any weight, and whether the weights are bitwise equal. It exits with status 1 if a weight
differs by more than ``--atol`` (0: bitwise), if an attempt lost more steps than a checkpoint interval, or if the
SIGTERM left no ``stopped_by`` in ``summary.json``; the figures also go to ``<out>/chaos.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/(\d+) ")
RESUMED_LINE = re.compile(r"resumed from \S+: epoch \d+, \d+ samples into it, step (\d+)")
KILL_TARGETS = ("job", "rank", "worker")


@dataclass
class Fault:
    """One interruption: what was sent to which process, and what it cost."""

    kind: str  # SIGKILL or SIGTERM
    target: str  # job | rank | worker | agent
    resumed_from: int  # the optimizer step this attempt started from (0: from scratch)
    reached: int  # the last step this attempt logged before the fault
    exit_code: int | None = None
    next_resumed_from: int | None = None

    @property
    def steps_lost(self) -> int | None:
        return None if self.next_resumed_from is None else self.reached - self.next_resumed_from


@dataclass
class Report:
    faults: list[Fault] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    bitwise_equal: dict[str, bool] = field(default_factory=dict)
    stopped_by: str | None = None
    seconds: float = 0.0


def command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    launcher = [sys.executable]
    if args.processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}"]
    return [
        *launcher,
        str(ROOT / "train.py"),
        f"epochs={args.epochs}",
        f"batch_size={args.batch_size}",
        f"limit_train_batches={args.steps_per_epoch}",
        f"data.num_workers={args.workers}",
        f"checkpoint_every_steps={args.checkpoint_every}",
        "checkpoint_keep=2",
        "logger.progress_bar=false",
        "logger.log_interval=1",
        "runtime.num_threads=1",
        "resume=auto",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]


# torchrun's agent turns these signals into a shutdown that forwards the signal to the ranks; its default list lacks
# SIGUSR1, which would end the agent at once and leave the ranks running while the job script goes on
AGENT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = AGENT_SIGNALS
    return env


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux ``/proc``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children(current)
    return tree


def ranks_and_workers(launcher: int, processes: int) -> tuple[list[int], list[int]]:
    """The training processes (the agent's children under torchrun, else the launcher itself) and their loader
    workers (their children: the multiprocessing resource tracker too, which is not a worker, is excluded)."""
    ranks = children(launcher) if processes > 1 else [launcher]
    workers = []
    for rank in ranks:
        for child in children(rank):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline and b"semaphore_tracker" not in cmdline:
                workers.append(child)
    return ranks, workers


def last_step(log: Path) -> int:
    """The optimizer step of the last ``epoch e/E step s/S`` line of rank 0's log (0 if none yet)."""
    steps = [(int(e) - 1) * int(total) + int(s) for e, s, total in STEP_LINE.findall(log.read_text(errors="replace"))]
    return steps[-1] if steps else 0


def resumed_step(log: Path) -> int | None:
    found = RESUMED_LINE.findall(log.read_text(errors="replace"))
    return int(found[-1]) if found else None


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until every process of ``pids`` has ended (ranks left behind by a killed agent finish their checkpoint);
    SIGKILL those still there after ``timeout`` seconds, so the next attempt never runs beside them."""
    end = time.time() + timeout
    while time.time() < end and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    signal_all([pid for pid in pids if alive(pid)], signal.SIGKILL)


def attempt(args: argparse.Namespace, run_dir: Path, log: Path, fault: str | None, rng: random.Random) -> Fault | None:
    """One start of the run; with ``fault`` ("SIGKILL" or "stop") it is interrupted once it has made progress. Returns
    the fault injected, or None when the run finished first (then the fault is not counted)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command(args, run_dir),
            cwd=ROOT,
            env=environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    injected, seen = None, [proc.pid]
    try:
        if fault is not None:
            started = None
            while proc.poll() is None:
                time.sleep(0.2)
                if started is None:
                    started = resumed_step(log)
                    if started is None and last_step(log) > 0:
                        started = 0  # logged a step without a resume line: started from scratch
                    continue
                if last_step(log) >= started + args.min_steps:
                    time.sleep(rng.uniform(0, args.jitter))
                    if proc.poll() is not None:
                        break
                    ranks, workers = ranks_and_workers(proc.pid, args.processes)
                    seen = process_tree(proc.pid)
                    if fault == "stop":
                        sig = signal.Signals[args.stop_signal]
                        if args.stop_target == "all":
                            target, pids = "all", seen
                        else:
                            target, pids = ("agent" if args.processes > 1 else "rank"), [proc.pid]
                    else:
                        targets = [t for t in KILL_TARGETS if t != "worker" or workers]
                        if args.processes == 1:
                            targets = [t for t in targets if t != "rank"]  # the rank is the job
                        target = rng.choice(targets)
                        pids = {
                            "job": process_tree(proc.pid),
                            "rank": [rng.choice(ranks)] if ranks else [proc.pid],
                            "worker": [rng.choice(workers)] if workers else [],
                        }[target]
                        sig = signal.SIGKILL
                    reached = last_step(log)
                    signal_all(pids, sig)
                    injected = Fault(sig.name, target, started, reached)
                    break
        proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        signal_all(process_tree(proc.pid), signal.SIGKILL)
        raise RuntimeError(f"an attempt ran over {args.timeout} s; see {log}") from None
    finally:
        wait_gone(seen, timeout=60)  # ranks and workers a killed agent or rank left behind
    if injected is not None:
        injected.exit_code = proc.returncode
        injected.reached = max(injected.reached, last_step(log))  # steps logged while the signal was on its way
    elif proc.returncode != 0:
        raise RuntimeError(f"an attempt failed with exit status {proc.returncode}; see {log}")
    return injected


def weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {name: ckpt[name] for name in ("model", "ema") if ckpt.get(name) is not None}


def compare(reference: Path, chaos: Path, report: Report) -> None:
    ref, got = weights(reference), weights(chaos)
    for name, tensors in ref.items():
        other = got[name]
        assert tensors.keys() == other.keys(), f"{name}: different keys"
        diffs = [(tensors[k].double() - other[k].double()).abs().max().item() for k in tensors if tensors[k].numel()]
        report.max_abs_diff[name] = max(diffs, default=0.0)
        report.bitwise_equal[name] = all(torch.equal(tensors[k], other[k]) for k in tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs to inject")
    parser.add_argument("--sigterm", type=int, default=1, help="stop signals (SIGTERM by default) to inject")
    parser.add_argument("--stop-signal", choices=("SIGTERM", "SIGUSR1"), default="SIGTERM")
    parser.add_argument(
        "--stop-target", choices=("agent", "all"), default="agent", help="the torchrun agent, or every process"
    )
    parser.add_argument("--processes", type=int, default=2, help="ranks (torchrun --nproc_per_node); 1: no torchrun")
    parser.add_argument("--workers", type=int, default=1, help="data.num_workers")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=16, help="limit_train_batches")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoint-every", type=int, default=2, help="checkpoint_every_steps")
    parser.add_argument("--min-steps", type=int, default=3, help="steps an attempt trains before its fault")
    parser.add_argument("--jitter", type=float, default=1.0, help="random extra delay before a fault (s)")
    parser.add_argument("--seed", type=int, default=0, help="draws the faults' order, targets and delays")
    parser.add_argument("--atol", type=float, default=0.0, help="largest weight difference accepted (0: bitwise)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds an attempt may take")
    parser.add_argument("--out", type=Path, default=Path("outputs/chaos"))
    parser.add_argument("overrides", nargs="*", help="more train.py overrides (after --)")
    args = parser.parse_args(argv)
    started = time.time()
    rng = random.Random(args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    report = Report()

    attempt(args, args.out / "reference", args.out / "reference.log", None, rng)
    plan = ["SIGKILL"] * args.kills + ["stop"] * args.sigterm
    rng.shuffle(plan)
    number = 0
    for fault in plan:
        injected = attempt(args, args.out / "chaos", args.out / f"attempt_{number:02d}.log", fault, rng)
        if injected is None:
            print(f"the run finished before fault {fault} could be injected: make it longer", file=sys.stderr)
            break
        if report.faults:
            report.faults[-1].next_resumed_from = injected.resumed_from
        report.faults.append(injected)
        if fault == "stop":
            summary = json.loads((args.out / "chaos" / "summary.json").read_text())
            report.stopped_by = summary.get("stopped_by")
        number += 1
    final_log = args.out / f"attempt_{number:02d}.log"
    attempt(args, args.out / "chaos", final_log, None, rng)
    if report.faults:
        report.faults[-1].next_resumed_from = resumed_step(final_log)
    compare(args.out / "reference" / "last.pth", args.out / "chaos" / "last.pth", report)
    report.seconds = time.time() - started

    print("| # | fault | target | resumed from | reached | exit | steps lost |")
    print("|---|---|---|---|---|---|---|")
    for i, f in enumerate(report.faults):
        print(f"| {i} | {f.kind} | {f.target} | {f.resumed_from} | {f.reached} | {f.exit_code} | {f.steps_lost} |")
    for name in report.max_abs_diff:
        print(
            f"final {name} weights: max |difference| {report.max_abs_diff[name]:.3g}, "
            f"bitwise equal: {report.bitwise_equal[name]}"
        )
    print(f"stop recorded in summary.json: stopped_by={report.stopped_by}; {report.seconds:.0f} s in all")
    (args.out / "chaos.json").write_text(
        json.dumps({**asdict(report), "steps_lost": [f.steps_lost for f in report.faults]}, indent=2)
    )

    problems = [f"{n} weights differ by {d:.3g} > {args.atol}" for n, d in report.max_abs_diff.items() if d > args.atol]
    lost_too_many = [f for f in report.faults if f.steps_lost is None or f.steps_lost > args.checkpoint_every]
    problems += [f"a {f.kind} to the {f.target} lost {f.steps_lost} steps" for f in lost_too_many]
    stops = [f for f in report.faults if f.kind != "SIGKILL"]
    problems += [f"the {f.kind} lost {f.steps_lost} steps" for f in stops if f.steps_lost]
    if stops and report.stopped_by != args.stop_signal:
        problems.append(f"after the {args.stop_signal} summary.json says stopped_by={report.stopped_by}")
    if len(report.faults) < len(plan):
        problems.append(f"only {len(report.faults)} of {len(plan)} faults injected")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


def load_report(out: Path) -> dict[str, Any]:
    """``<out>/chaos.json`` as written by ``main``."""
    return json.loads((out / "chaos.json").read_text())


if __name__ == "__main__":
    sys.exit(main())
