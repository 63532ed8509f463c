"""``results/study_compute.json``: the training compute of every run of the study and the GPU estimate.

    python -m utils.report.compute            # (re)write it from results/

``run_study.py`` writes it after the scripts, before README is rendered. Runs kept for the record
outside the study's design (folders named ``superseded``), design probes (``probes``), archived
studies (``archive``) and the
other profiles' folders (``results/quick``, ``results/full``) are not counted: they are not part of a
standard re-run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

from utils.analysis.compute import study_compute
from utils.engine.cli import PROFILES
from utils.engine.files import read_json, write_json

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = "study_compute.json"
SKIPPED_FOLDERS = {"superseded", "archive", "probes", *(p for p in PROFILES if p != "standard")}


def run_dicts(results: Path) -> Iterator[dict]:
    """Every run record under ``results`` (as its JSON dict), outside :data:`SKIPPED_FOLDERS`."""
    for path in sorted(Path(results).rglob("*.json")):
        if SKIPPED_FOLDERS & set(path.relative_to(results).parts[:-1]):
            continue
        raw = read_json(path)
        if isinstance(raw, dict) and "config_hash" in raw and "flops_per_image" in raw:
            yield raw


def write_study_compute(results: Path) -> dict:
    out = study_compute(run_dicts(results))
    write_json(Path(results) / OUTPUT, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", default=str(ROOT / "results"))
    args = p.parse_args(argv)
    out = write_study_compute(Path(args.results_dir))
    print(f"{out['runs']} runs, {out['training_pflop']:.3f} training PFLOP, {out['steps']:,} steps -> "
          f"{Path(args.results_dir) / OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
