"""Re-run the whole study: the three homework scripts in turn, then README from the new results.

    python run_study.py --data-dir ./data            # standard profile (the committed results)
    python run_study.py --profile quick              # every step end to end on small subsets
    python run_study.py --force                      # retrain everything, even finished models

Each script runs in its own process (its own log, its own exit code). The wall time of every
script and of the whole study is written to ``results/study_run.json`` (with the machine it ran on
and whether finished models were skipped), then README.md is re-rendered from ``results/``.
A failing script stops the study with its exit code; the timings so far are still written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from utils import report
from utils.cli import PROFILES, profile_output_dir
from utils.files import write_json
from utils.runtime import resolve_runtime

ROOT = Path(__file__).resolve().parent
SCRIPTS = ("homework_cnn_vs_fc_comparison.py", "homework_cnn_architecture_analysis.py",
           "homework_custom_layers_experiments.py")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="passed to every script (default: $HOMEWORK_DATA_DIR, else ./data)")
    p.add_argument("--profile", choices=PROFILES, default="standard")
    p.add_argument("--results-dir", default=None,
                   help="passed to every script (default: results, or results/<profile> for quick/full)")
    p.add_argument("--force", action="store_true", help="retrain models whose finished results exist")
    p.add_argument("--no-readme", action="store_true", help="do not re-render README.md at the end")
    args = p.parse_args(argv)

    runtime = resolve_runtime()
    results = Path(args.results_dir or profile_output_dir("results", args.profile))
    common = ["--profile", args.profile, "--results-dir", str(results)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if args.force:
        common.append("--force")
    record = {"profile": args.profile, "force": args.force, "started": dt.datetime.now().isoformat(timespec="seconds"),
              "git_commit": git_commit(), "runtime": runtime.describe(), "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "scripts": [], "total_wall_s": None, "status": "running"}
    t_start = time.perf_counter()
    code = 0
    for script in SCRIPTS:
        t0 = time.perf_counter()
        print(f"== {script} ({args.profile})", flush=True)
        code = subprocess.call([sys.executable, str(ROOT / script), *common])
        record["scripts"].append({"script": script, "wall_s": time.perf_counter() - t0, "exit_code": code})
        record["total_wall_s"] = time.perf_counter() - t_start
        if code != 0:
            record["status"] = f"stopped: {script} exited with {code}"
            break
    else:
        record["status"] = "completed"
    try:
        write_json(results / "study_run.json", record)
    except OSError as exc:
        print(f"error: could not write {results / 'study_run.json'} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    per_script = ", ".join(f"{s['script']}: {s['wall_s'] / 60:.1f} min" for s in record["scripts"])
    print(f"== study {record['status']} in {record['total_wall_s'] / 60:.1f} min ({per_script})", flush=True)
    if code != 0:
        return code
    if not args.no_readme and args.profile == "standard" and results.resolve() == (ROOT / "results").resolve():
        return report.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
