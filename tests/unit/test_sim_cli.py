"""`xinhe simulate` end to end, in-process."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from controlplane.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sim"


def test_synthetic_run_prints_table_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert main(["simulate", "--synthetic", "80", "--seed", "2", "--load", "1.2",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("policy")
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["xinhe", "fifo", "pinned"]
    report = json.loads(out.read_text())
    assert report["inputs"]["jobs"] == 80
    assert report["inputs"]["offered_load"] == pytest.approx(1.2)
    assert {p["policy"] for p in report["policies"]} == {"xinhe", "fifo", "pinned"}
    for summary in report["policies"]:
        assert summary["jobs"] == 80 and summary["preemptions"] == 0
        assert summary["avg_jct_s"] >= summary["lower_bound_avg_jct_s"] > 0
    assert set(report["ratios"]) == {"avg_jct_xinhe_over_fifo", "avg_jct_pinned_over_fifo"}


def test_files_and_json_on_stdout(tmp_path, capsys) -> None:
    trace = tmp_path / "t.csv"
    lines = (EXAMPLES / "chinese-trace.csv").read_text().splitlines()[:41]
    trace.write_text("\n".join(lines) + "\n")
    assert main(["simulate", "--fleet", str(EXAMPLES / "chinese-fleet.csv"),
                 "--trace", str(trace), "--policies", "fifo"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert [p["policy"] for p in report["policies"]] == ["fifo"]
    assert report["policies"][0]["jobs"] == 40


@pytest.mark.parametrize(("argv", "message"), [
    (["--synthetic", "5", "--policies", "magic"], "unknown policy ['magic']"),
    (["--synthetic", "5", "--trace", "x.csv"], "give exactly one of"),
    (["--gavel", "/nonexistent"], "Gavel files not found"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys) -> None:
    assert main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_model_in_fleet_names_the_line(tmp_path, capsys) -> None:
    fleet = tmp_path / "f.csv"
    fleet.write_text("pool,region,model,nodes,devices_per_node,cost_per_device_hour\n"
                     "p,east,H100,1,8,1\nq,west,Quantum9,1,8,1\n")
    assert main(["simulate", "--fleet", str(fleet), "--trace",
                 str(EXAMPLES / "chinese-trace.csv")]) == 2
    assert f"{fleet}:3: unknown accelerator model 'Quantum9'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None,
                    reason="matplotlib installed: the plot is made instead")
def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, capsys) -> None:
    argv = ["simulate", "--synthetic", "20", "--policies", "fifo", "--json",
            str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")]
    assert main(argv) == 2
    assert "xinhe-orchestrator[plot]" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="no matplotlib")
def test_plot_is_a_png(tmp_path) -> None:
    png = tmp_path / "p.png"
    assert main(["simulate", "--synthetic", "20", "--json", str(tmp_path / "r.json"),
                 "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
