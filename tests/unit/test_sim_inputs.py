"""Fleet and trace files: catalogue spellings accepted, bad lines named."""

from __future__ import annotations

import io

import pytest

from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import parse_fleet, read_fleet, write_fleet
from controlplane.sim.trace import TRACE_COLUMNS, parse_trace, read_trace, write_trace

FLEET_HEAD = "pool,region,model,nodes,devices_per_node,cost_per_device_hour\n"
TRACE_HEAD = ",".join(TRACE_COLUMNS) + "\n"


def fleet_of(body: str):
    return parse_fleet(io.StringIO(FLEET_HEAD + body), "fleet.csv")


def trace_of(body: str):
    return parse_trace(io.StringIO(TRACE_HEAD + body), "trace.csv")


@pytest.mark.parametrize(("written", "model", "family"), [
    ("H100", "H100", "nvidia"),
    ("a100", "A100", "nvidia"),
    ("910B", "910B", "ascend"),
    ("Ascend910B3", "910B", "ascend"),
    ("MLU370-X8", "MLU370-X8", "cambricon"),
    ("mlu370x8", "MLU370-X8", "cambricon"),
    ("K100_AI", "K100_AI", "hygon"),
    ("p800", "P800", "kunlunxin"),
])
def test_fleet_accepts_catalogue_spellings(written: str, model: str, family: str) -> None:
    pool = fleet_of(f"p,east,{written},2,8,1.5\n").pools[0]
    assert (pool.model, pool.family, pool.devices) == (model, family, 16)
    assert pool.cost_per_device_hour == 1.5


@pytest.mark.parametrize(("row", "message"), [
    ("p,east,H1000,2,8,1", "fleet.csv:3: unknown accelerator model 'H1000'"),
    ("p,east,H100,two,8,1", "fleet.csv:3: nodes: expected an integer, got 'two'"),
    ("p,east,H100,2,0,1", "fleet.csv:3: pool 'p': nodes and devices_per_node must be >= 1"),
    ("a,east,H100,2,8,1", "fleet.csv: pool names must be unique"),
])
def test_fleet_errors_name_the_line(row: str, message: str) -> None:
    with pytest.raises(SimInputError) as err:
        fleet_of(f"a,east,A100,1,8,1\n{row}\n")
    assert str(err.value).startswith(message)


def test_fleet_missing_column() -> None:
    with pytest.raises(SimInputError, match=r"fleet.csv:1: missing column\(s\) nodes"):
        parse_fleet(io.StringIO("pool,region,model\np,e,H100\n"), "fleet.csv")


def test_trace_row_fields() -> None:
    [job] = trace_of("j1,5.5,lab-a,2,4,8,64,ascend;H100,3600,h100=3.5;Ascend910B3=1.2\n")
    assert (job.job_id, job.submit_time_s, job.tenant, job.priority) == ("j1", 5.5, "lab-a", 2)
    assert (job.replicas, job.devices_per_replica, job.devices) == (4, 8, 32)
    assert job.min_device_memory_bytes == 64 * 10**9
    assert job.families == {"ascend"} and job.models == {"H100"}
    assert job.first_family == "ascend" and job.named == ("ascend", "H100")
    assert job.speed == (("910B", 1.2), ("H100", 3.5))


def test_trace_defaults_and_order() -> None:
    jobs = trace_of("late,20,,,,1,,,10,\nearly,10,t,0,1,1,0,,10,\n")
    assert [j.job_id for j in jobs] == ["early", "late"]
    late = jobs[1]
    assert (late.tenant, late.priority, late.replicas, late.families, late.speed) == (
        "default", 0, 1, frozenset(), ())
    assert late.first_family == ""


def test_a_model_entry_pins_its_family() -> None:
    [job] = trace_of("j,0,t,0,1,1,0,K100_AI;nvidia,10,\n")
    assert job.first_family == "hygon"


@pytest.mark.parametrize(("row", "message"), [
    ("j,0,t,0,1,1,0,quantum,10,", "trace.csv:3: families: 'quantum' is neither a family"),
    ("j,0,t,0,1,1,0,,10,H100:2", "trace.csv:3: relative_speed: expected model=factor"),
    ("j,0,t,0,1,1,0,,10,X9=2", "trace.csv:3: unknown accelerator model 'X9'"),
    ("j,0,t,0,1,1,0,,10,H100=0", "trace.csv:3: relative_speed: factor for H100 must be > 0"),
    ("j,0,t,0,1,0,0,,10,", "trace.csv:3: devices_per_replica: must be >= 1, got 0"),
    ("j,-1,t,0,1,1,0,,10,", "trace.csv:3: submit_time_s: must be >= 0"),
    ("j,0,t,0,1,1,0,,nan,", "trace.csv:3: reference_runtime_s: expected a finite number"),
    ("ok,0,t,0,1,1,0,,10,", "trace.csv:3: job_id: duplicate 'ok'"),
])
def test_trace_errors_name_the_line(row: str, message: str) -> None:
    with pytest.raises(SimInputError) as err:
        trace_of(f"ok,0,t,0,1,1,0,,10,\n{row}\n")
    assert str(err.value).startswith(message)


def test_files_round_trip(tmp_path) -> None:
    fleet = fleet_of("h,east,H100,2,8,2.9\nm,west,MLU370-X8,3,8,0.5\n")
    jobs = trace_of("a,1,t,0,2,4,48,cambricon;H100,100,MLU370-X8=0.4\nb,2,u,1,1,1,0,,50,\n")
    write_fleet(fleet, tmp_path / "f.csv")
    write_trace(jobs, tmp_path / "t.csv")
    assert read_fleet(tmp_path / "f.csv") == fleet
    assert read_trace(tmp_path / "t.csv") == jobs


def test_spreadsheet_exports_read_like_plain_csv(tmp_path) -> None:
    """A byte-order mark, CRLF line ends, spaces and capitals around header
    names, quoted cells: what a spreadsheet or another tool writes."""
    fleet_file, trace_file = tmp_path / "fleet.csv", tmp_path / "trace.csv"
    fleet_file.write_bytes(
        b"\xef\xbb\xbfPool , Region,MODEL,nodes,devices_per_node,cost_per_device_hour\r\n"
        b"a , east, h100 ,2,8,3.5\r\n\r\nb,west,\"Ascend910B3\",1,8,\r\n")
    trace_file.write_bytes(
        b"\xef\xbb\xbfjob_id,submit_time_s,tenant,priority,replicas,devices_per_replica,"
        b"min_device_memory_gb,families,reference_runtime_s,relative_speed\r\n"
        b"j1,0,t1,0,1,1,0,\"nvidia; Ascend\",3600,H100=3.0;910B=1.2\r\n")
    fleet = read_fleet(fleet_file)
    assert [(p.name, p.model) for p in fleet.pools] == [("a", "H100"), ("b", "910B")]
    [job] = read_trace(trace_file)
    assert job.job_id == "j1" and job.reference_runtime_s == 3600
