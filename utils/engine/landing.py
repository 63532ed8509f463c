"""An experiment's analysis, landed: the runs it read, so that it outlives the trained weights.

Run records and analyses are committed; trained weights (``checkpoints/*.final.pt``) are not. An
analysis that needs trained models (an ERF, feature maps) can only be redone where its weights are,
so on a fresh checkout the runner would retrain every run just to redo it. Instead, an experiment
writes ``landed.json`` beside its analysis: the config hash of every run the analysis read. A later
call that finds exactly those runs finished (same hashes), but some of their weights gone, keeps the
landed analysis and its figures and trains nothing (``--force`` retrains). Where the weights are
present the analysis is redone with today's code, as before; where the runs differ (another
profile, a changed architecture or config) it is redone from the new runs.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Sequence

from utils.engine.files import read_json, write_json
from utils.engine.records import RunRecord

LANDED_FILE = "landed.json"
log = logging.getLogger(__name__)


def final_weights_path(results_dir: Path, record: RunRecord) -> Path:
    """Where the runner keeps ``record``'s final weights (``<results>/<experiment>/checkpoints/``)."""
    return Path(results_dir) / record.experiment / "checkpoints" / f"{record.model}.final.pt"


def _hashes(records: Sequence[RunRecord]) -> list[str]:
    return sorted({r.config_hash for r in records})


def write_landing(folder: Path, records: Sequence[RunRecord]) -> None:
    """Mark ``folder``'s analysis as written from ``records`` (call it after the analysis and its
    figures are written, so an interrupted analysis never counts as landed)."""
    write_json(Path(folder) / LANDED_FILE, {
        "description": "the runs this folder's analysis read (utils/engine/landing.py): a later call that "
                       "finds exactly these runs but not their trained weights keeps the analysis",
        "written": dt.datetime.now().isoformat(timespec="seconds"), "config_hashes": _hashes(records),
        "runs": sorted(f"{r.experiment}/{r.model}" for r in records)})


def keeps_landed_analysis(folder: Path, records: Sequence[RunRecord], results_dir: Path) -> bool:
    """True when ``folder``'s landed analysis was written from exactly ``records`` and some of their
    final weights are gone: redoing it would mean retraining runs whose results are already here.
    False (redo the analysis) when nothing landed, the runs differ, or every weight file is present."""
    landed = read_json(Path(folder) / LANDED_FILE)
    if not isinstance(landed, dict) or landed.get("config_hashes") != _hashes(records):
        return False
    missing = [r for r in records if not final_weights_path(results_dir, r).is_file()]
    if not missing:
        return False
    log.warning("%s: analysis landed on %s from these %d runs; %d of their trained weights are not here, so it "
                "is kept as written (--force retrains and redoes it)", folder, landed.get("written", "?"),
                len(records), len(missing))
    return True
