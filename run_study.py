"""Re-run the whole study: the three homework scripts in turn, then README from the new results.

    python run_study.py --data-dir ./data            # standard profile (the committed results)
    python run_study.py --profile quick              # every step end to end on small subsets
    python run_study.py --force                      # retrain everything, even finished models
    python run_study.py --tasks 2                    # only task 2's script (one task per session)

Each script runs in its own process (its own log, its own exit code). The wall time of every
script and of the whole study is written to ``results/study_run.json`` (with the machine it ran on
and whether finished models were skipped), the training compute of its runs to
``results/study_compute.json`` (``utils/report/compute.py``), then README.md and docs/*.md are re-rendered from ``results/``.
A failing script stops the study with its exit code; the timings so far are still written.
A study longer than a session is run a task at a time (``--tasks``): the scripts resume, but a
comparison must train on one machine, and the machine may differ between sessions.
The study holds the results folder's lock (``utils/engine/lock.py``) from start to end, and its
scripts write under it; a second study or script on the same folder stops at once (exit 2).
Ctrl-C or SIGTERM stops it too: the script in progress saves its finished models and exits, the
record is written with ``"status": "interrupted"``, and the exit code is 130; running the same
command again skips the finished models and resumes the rest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from utils.report import readme as report
from utils.report.compute import write_study_compute
from utils.engine.cli import (PROFILES, cache_dir_from, check_writable, ignore_interrupts, profile_output_dir, run_cli)
from utils.engine.data_files import resolve_data_dir
from utils.engine.errors import OutputError
from utils.engine.files import read_json, write_json
from utils.engine.invocation import legs_since
from utils.engine.lock import acquire_results_lock, child_env
from utils.engine.runtime import resolve_runtime, threads_from_env

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("homework_cnn_vs_fc_comparison.py", "homework_cnn_architecture_analysis.py",
           "homework_custom_layers_experiments.py")
TASKS = dict(enumerate(SCRIPTS, start=1))     # the assignment's task number -> its script
SIGINT_GRACE_S = 10     # a script that did not get the Ctrl-C itself (sent to run_study alone) gets it then
STOP_TIMEOUT_S = 120    # an interrupted script still running after this is killed


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C. Unlike a terminal's Ctrl-C it reached this process only."""


def _raise_terminated(signum, frame):
    raise Terminated


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_script(path: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[int, bool]:
    """Run one script to its end (in environment ``env``): ``(exit code, whether it was interrupted)``."""
    child = subprocess.Popen([sys.executable, str(path), *args], env=env)
    try:
        return child.wait(), False
    except KeyboardInterrupt as exc:
        return _stop(child, terminated=isinstance(exc, Terminated)), True


def _stop(child: subprocess.Popen, terminated: bool) -> int:
    """Let an interrupted script save its finished work and exit (it ends with 130); kill it if it
    does not within STOP_TIMEOUT_S, or at a second Ctrl-C."""
    try:
        if terminated:
            child.send_signal(signal.SIGTERM)
        else:
            try:   # a terminal's Ctrl-C reaches the whole process group, the script included
                return child.wait(SIGINT_GRACE_S)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGINT)
        return child.wait(STOP_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        ignore_interrupts()
        child.kill()
        return child.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None,
                   help="passed to every script; must exist (default: $HOMEWORK_DATA_DIR, else ./data)")
    p.add_argument("--profile", choices=PROFILES, default="standard")
    p.add_argument("--results-dir", default=None,
                   help="passed to every script (default: results, or results/<profile> for quick/full)")
    p.add_argument("--force", action="store_true", help="retrain models whose finished results exist")
    p.add_argument("--tasks", nargs="+", type=int, choices=sorted(TASKS), default=sorted(TASKS), metavar="N",
                   help="run only these tasks' scripts, in task order (default: 1 2 3); a study that spans "
                        "sessions runs whole tasks per session, so every comparison trains on one machine")
    p.add_argument("--no-readme", action="store_true", help="do not re-render README.md and docs/*.md at the end")
    args = p.parse_args(argv)

    # What every script would refuse is refused here, before the first script starts.
    runtime = resolve_runtime(threads=threads_from_env())
    resolve_data_dir(args.data_dir)
    cache_dir_from(None)
    results = Path(args.results_dir or profile_output_dir("results", args.profile))
    check_writable("results", results)
    lock = acquire_results_lock(results)      # released by run_cli
    common = ["--profile", args.profile, "--results-dir", str(results)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if args.force:
        common.append("--force")
    record = {"profile": args.profile, "force": args.force, "tasks": sorted(set(args.tasks)), "started": dt.datetime.now().isoformat(timespec="seconds"),
              "git_commit": git_commit(), "runtime": runtime.describe(), "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "scripts": [], "total_wall_s": None, "status": "running"}
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run_study(args, common, record, results, child_env(lock))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_study(args: argparse.Namespace, common: list[str], record: dict, results: Path,
               env: dict[str, str]) -> int:
    code, interrupted = _run_scripts([TASKS[t] for t in record["tasks"]], common, record, args.profile, results, env)
    try:
        write_json(results / "study_run.json", {**record, "earlier_runs": _earlier_runs(results / "study_run.json")})
        write_study_compute(results)
    except OutputError as exc:       # reported here: an interrupted study still ends with 130
        print(f"error: {exc}", file=sys.stderr)
        return 130 if interrupted else 2
    per_script = ", ".join(f"{s['script']}: {s['wall_s'] / 60:.1f} min" for s in record["scripts"])
    print(f"== study {record['status']} in {record['total_wall_s'] / 60:.1f} min ({per_script})", flush=True)
    if interrupted:
        done = sum(1 for s in record["scripts"] if s["exit_code"] == 0)
        print(f"interrupted: {results / 'study_run.json'} records the {done} script(s) finished so far; the "
              f"finished models are saved, and the same command resumes the rest", file=sys.stderr)
        return 130
    if code != 0:
        return code
    if not args.no_readme and args.profile == "standard" and results.resolve() == (ROOT / "results").resolve():
        return report.main([])
    return 0


def _earlier_runs(path: Path) -> list[dict]:
    """The study's earlier invocations (a study resumed over sessions and machines keeps them all)."""
    old = read_json(path)
    if not isinstance(old, dict) or "scripts" not in old:
        return []
    return [*old.get("earlier_runs", []), {k: v for k, v in old.items() if k != "earlier_runs"}]


def script_cost(results: Path, script: str, started: str) -> dict:
    """What a script's own invocation log says about its call(s) since ``started``: training share
    (training seconds of runs trained in the call / its wall time), and the precision and CPU it ran on."""
    legs = legs_since(results, Path(script).stem, started)
    wall, train = sum(leg["wall_s"] for leg in legs), sum(leg["train_s"] for leg in legs)
    return {"train_s": train, "train_share": train / wall if wall > 0 else None,
            "runs_trained": sum(leg["trained"] for leg in legs),
            "precision": sorted({leg["runtime"]["precision"] for leg in legs}),
            "cpu": sorted({leg["runtime"]["cpu_capabilities"]["model"] for leg in legs}),
            "cpu_flags": [leg["runtime"]["cpu_capabilities"]["flags"] for leg in legs[-1:]]}


def _run_scripts(scripts: list[str], common: list[str], record: dict, profile: str, results: Path,
                 env: dict[str, str]) -> tuple[int, bool]:
    """Run ``scripts`` in turn (in environment ``env``), filling ``record``; ``(last exit code, whether
    interrupted)``."""
    t_start = time.perf_counter()
    code, interrupted = 0, False
    try:
        for script in scripts:
            t0 = time.perf_counter()
            print(f"== {script} ({profile})", flush=True)
            code, interrupted = run_script(ROOT / script, common, env)
            interrupted = interrupted or code == 130      # the script alone was interrupted
            entry = {"script": script, "wall_s": time.perf_counter() - t0, "exit_code": code,
                     **script_cost(results, script, record["started"])}
            # a script that finished during the grace period is recorded as finished
            record["scripts"].append({**entry, "interrupted": True} if interrupted and code != 0 else entry)
            if interrupted or code != 0:
                break
    except KeyboardInterrupt:      # between two scripts
        interrupted = True
    if interrupted:
        ignore_interrupts()        # the record must now be written whole
    record["total_wall_s"] = time.perf_counter() - t_start
    record["status"] = ("interrupted" if interrupted else f"stopped: {script} exited with {code}" if code != 0
                        else "completed")
    return code, interrupted


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: finished results are saved; the same command resumes "
                                               "the rest"))
