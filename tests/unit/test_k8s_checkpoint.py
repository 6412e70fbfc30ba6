"""Checkpoint requests into pods through exec, over recorded exec frames."""

from __future__ import annotations

import json
import signal

import pytest
from kubernetes.client.exceptions import ApiException

from agents.checkpoint import DONE_FILE, REQUEST_FILE, Checkpointer
from agents.kubernetes.checkpoint import request_in_pod
from agents.kubernetes.executor import KubernetesCluster
from agents.kubernetes.inventory import adapters_for_node
from agents.kubernetes.podexec import EXEC_FAILED, exit_status
from agents.kubernetes.pods import PodSettings
from agents.launcher import ReplicaPhase as P
from agents.launcher import ReplicaSpec
from tests.fixtures.kubernetes.fake_api import FakeCoreV1, fake_stream
from tests.unit.test_agent_protocol import wait_for

CKPT = "/mnt/shared/ckpt/j-mig"
POD = "xj-j-mig-a2-r0"
SETTINGS = PodSettings(namespace="xinhe-jobs", default_image="registry.local/xinhe/base:1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def running_pod(api: FakeCoreV1):
    """A replica with a checkpoint dir whose pod is Running."""
    states: list[tuple] = []
    cluster = KubernetesCluster(api, SETTINGS, poll_interval=3600, stream=fake_stream)
    backend = cluster.backend_for("gpu-h100-01", adapters_for_node(cluster.nodes, "gpu-h100-01"))
    spec = ReplicaSpec(job_id="j-mig", attempt=2, rank=0, command=("python", "train.py"),
                       family="nvidia", device_indices=(0,), epoch=4, checkpoint_dir=CKPT)
    handle = backend.start(spec, {}, lambda _h, phase, code, msg: states.append((phase, msg)))
    cluster.monitor.poll_once()
    assert states[-1][0] is P.RUNNING
    return cluster, handle, states


def test_checkpoint_is_asked_in_the_pod_then_the_pod_is_deleted():
    api = FakeCoreV1(script="pods-deleted.json")
    cluster, handle, states = running_pod(api)
    assert Checkpointer().start(handle, timeout=30, grace=3, reason="migrating to ascend")
    wait_for(lambda: api.deleted_pods, timeout=20, what="the pod deleted after the checkpoint")
    assert api.deleted_pods == [(POD, 3)]
    assert api.signals[0] == (POD, "-USR1")
    (request_argv, *polls) = [argv for _, argv in api.execs]
    assert request_argv[:2] == ["sh", "-c"] and request_argv[4] == CKPT
    assert len(polls) >= 2  # the job answered on the second look
    assert f"{CKPT}/{REQUEST_FILE}" not in api.files  # the job cleared it
    cluster.monitor.poll_once()  # the pod is gone
    phase, message = states[-1]
    assert phase is P.STOPPED and message.startswith("migrating to ascend: checkpoint "
                                                     "step-000120 complete in")


def test_a_marker_of_an_earlier_attempt_is_not_an_answer():
    api = FakeCoreV1(script="pods-deleted.json")
    api.answer_after = None  # this job never answers
    old = json.dumps({"name": "step-000050", "attempt": 1}) + "\n"
    api.files[f"{CKPT}/{DONE_FILE}"] = old
    _, handle, _ = running_pod(api)
    clock = FakeClock()
    outcome = request_in_pod(handle.exec, CKPT, 2, lambda: False, timeout=10, clock=clock,
                             sleep=clock.sleep)
    assert not outcome.completed and outcome.message.startswith("no checkpoint within 10s")
    assert f"{CKPT}/{REQUEST_FILE}" not in api.files  # withdrawn: the resumed job is not asked
    assert api.files[f"{CKPT}/{DONE_FILE}"] == old


def test_a_sibling_answer_naming_this_attempt_counts_at_once():
    api = FakeCoreV1(script="pods-deleted.json")
    api.answer_after = None
    api.files[f"{CKPT}/{DONE_FILE}"] = json.dumps({"name": "step-000200", "attempt": 2})
    _, handle, _ = running_pod(api)
    clock = FakeClock()
    outcome = request_in_pod(handle.exec, CKPT, 2, lambda: False, timeout=10, clock=clock,
                             sleep=clock.sleep)
    assert outcome.completed and outcome.name == "step-000200" and clock.now == 0


@pytest.mark.parametrize(("failure", "expected"), [
    ("no-shell", 'exec: "sh": executable file not found in $PATH'),
    ("read-only-fs", "writing the checkpoint request in the pod failed: sh: can't create "
                     f"{CKPT}/{REQUEST_FILE}: Read-only file system"),
])
def test_a_pod_that_cannot_take_the_request_says_why(failure, expected):
    api = FakeCoreV1(script="pods-deleted.json")
    api.exec_failure = failure
    _, handle, _ = running_pod(api)
    outcome = handle.checkpoint(30)
    assert not outcome.completed and expected in outcome.message
    assert len(api.execs) == 1  # no waiting for an answer that cannot come


def test_no_exec_right_fails_fast_and_the_pod_is_still_stopped():
    api = FakeCoreV1(script="pods-deleted.json")
    api.fail_exec = ApiException(status=403, reason="Forbidden")
    cluster, handle, states = running_pod(api)
    Checkpointer().start(handle, timeout=30, grace=1, reason="migrating")
    wait_for(lambda: api.deleted_pods, timeout=10, what="the pod deleted anyway")
    cluster.monitor.poll_once()
    assert states[-1] == (P.STOPPED, "migrating: cannot exec in the pod: HTTP 403 Forbidden")


def test_a_signal_is_sent_to_pid_1_through_exec():
    api = FakeCoreV1(script="pods-deleted.json")
    _, handle, _ = running_pod(api)
    handle.send_signal(signal.SIGUSR1)
    assert api.signals == [(POD, f"-{int(signal.SIGUSR1)}")]


@pytest.mark.parametrize(("status", "expected"), [
    ('{"metadata":{},"status":"Success"}', (0, "")),
    ('{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":'
     '[{"reason":"ExitCode","message":"137"}]}}', (137, "")),
    ('{"status":"Failure","message":"container not found (\\"replica\\")"}',
     (EXEC_FAILED, 'container not found ("replica")')),
    ("", (EXEC_FAILED, "no exit status on the error channel")),
])
def test_exit_status_reads_the_error_channel(status, expected):
    assert exit_status(status) == expected
