"""The multi-replica rehearsal of `make rehearse`, asserted (loadtests/rehearse.py)."""
from __future__ import annotations

from loadtests.rehearse import rehearse


def test_two_replicas_and_a_trainer_on_one_postgres(graft_home, postgres_database, tmp_path):
    figures = rehearse(postgres_database, graft_home, tmp_path, load_seconds=3.0)
    assert figures["propagation_s"] < 2.0
    assert figures["failed_survivor"] == 0 and figures["rps_after"] > 0
