"""benchmarks.relay_overhead on a small scale: both measurements run for real (direct and
relayed comms between processes, relayed Dask workers on a broker process), and the page is
derived from the record it writes."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import relay_overhead


@pytest.mark.slow
def test_small_overhead_run_records_both_paths_and_derives_the_page(tmp_path):
    out = tmp_path / "relay"
    argv = ["--out", str(out), "--megabytes", "2", "--messages", "50", "--repeats", "1"]
    # the AGC part (relayed stand-in runs) is tested in test_relay.py; its page section below
    assert (
        relay_overhead.main([*argv, "--workers", "1,3", "--idle", "0.5", "--agc-repeats", "0"]) == 0
    )
    record = json.loads((out / "relay-overhead.json").read_text())
    paths = {(r["path"], r["tls"]) for r in record["transfers"]}
    expected = {("direct", False), ("relayed", False)}
    if shutil.which("openssl"):
        expected |= {("direct", True), ("relayed", True)}
    assert paths == expected
    for row in record["transfers"]:
        assert row["big_mb_per_second"] > 0 and len(row["big_seconds"]) == 1
        assert row["small_latency_p99_us"] >= row["small_latency_median_us"] > 0
    assert [b["workers"] for b in record["broker"]] == [1, 3]
    for row in record["broker"]:
        # every call of client.run reached every worker through the broker
        assert row["relayed_connections"] >= 10 * row["workers"]
        assert row["rss_mb_joined"] > 0
    assert record["single_node"] and record["commit"]
    assert set(record["fit"]) >= {"rss_mb_joined_per_worker", "rss_mb_joined_at_1000"}
    page = (out / "README.md").read_text()
    assert "Single machine, loopback" in page
    assert (out / "relay-transfers.png").exists() and (out / "relay-broker.svg").exists()

    assert record["agc"] == [] and "AGC run" not in page

    # the page says what the record says: change the record, rebuild, read it back
    record["broker"][1]["rss_mb_joined"] = 123.4
    run = {"events": 1000, "chunks": 4, "workers": 2, "wall_seconds": 2.0}
    record["agc"] = [
        {**run, "path": "direct", "repeat": 0, "events_per_second": 500.0,
         "relayed_connections": 0, "relayed_bytes": 0},
        {**run, "path": "relayed", "repeat": 0, "events_per_second": 400.0,
         "relayed_connections": 9, "relayed_bytes": 2_000_000},
    ]  # fmt: skip
    (out / "relay-overhead.json").write_text(json.dumps(record))
    assert relay_overhead.main(["--out", str(out), "--rebuild"]) == 0
    page = (out / "README.md").read_text()
    assert "| 3 | 123.4 |" in page
    assert "| relayed | 2.00 (2.00-2.00) | 400 | 9 | 2.00 | 500 |" in page


def test_rebuild_without_a_record_says_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit):
        relay_overhead.main(["--out", str(tmp_path), "--rebuild"])
    assert "run without --rebuild first" in capsys.readouterr().err
