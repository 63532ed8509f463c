"""A landed analysis: kept when its runs are unchanged and their weights are gone, redone otherwise."""

from __future__ import annotations

import logging

from tests.fakes import fake_record
from utils.engine.landing import LANDED_FILE, final_weights_path, keeps_landed_analysis, write_landing


def _records(n=3):
    out = []
    for i in range(n):
        r = fake_record(f"m{i}", seed=i)
        r.config_hash = f"{i:012d}"
        out.append(r)
    return out


def _weights(results, records):
    for r in records:
        path = final_weights_path(results, r)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"w")


def test_kept_only_when_the_same_runs_lost_their_weights(tmp_path, caplog):
    folder, records = tmp_path / "test", _records()
    assert not keeps_landed_analysis(folder, records, tmp_path)          # nothing landed yet
    write_landing(folder, records)
    assert (folder / LANDED_FILE).is_file()
    with caplog.at_level(logging.WARNING):
        assert keeps_landed_analysis(folder, list(reversed(records)), tmp_path)   # order does not matter
    assert "3 of their trained weights are not here" in caplog.text
    _weights(tmp_path, records)
    assert not keeps_landed_analysis(folder, records, tmp_path)          # weights here: redo with today's code
    final_weights_path(tmp_path, records[1]).unlink()
    assert keeps_landed_analysis(folder, records, tmp_path)              # one gone is enough to keep it


def test_other_runs_are_analysed_again(tmp_path):
    folder, records = tmp_path / "test", _records()
    write_landing(folder, records)
    changed = _records()
    changed[2].config_hash = "f" * 12                                    # e.g. a changed config or architecture
    assert not keeps_landed_analysis(folder, changed, tmp_path)
    assert not keeps_landed_analysis(folder, records[:2], tmp_path)      # a run fewer (another profile)
    assert not keeps_landed_analysis(folder, _records(4), tmp_path)      # a run more
