"""Pod phase -> replica state, over recorded pod status sequences."""

from __future__ import annotations

import pytest

from agents.kubernetes.watch import PodMonitor, pod_state
from agents.launcher import ReplicaPhase as P
from tests.fixtures.kubernetes.fake_api import deserialize, load


def states(fixture: str) -> list[tuple]:
    return [pod_state(deserialize(pod, "V1Pod")) for pod in load(fixture)["pods"]]


@pytest.mark.parametrize(("fixture", "expected"), [
    ("pods-succeeded.json", [(P.STARTING, 0, ""), (P.STARTING, 0, "ContainerCreating"),
                             (P.RUNNING, 0, ""), (P.SUCCEEDED, 0, "")]),
    ("pods-oomkilled.json", [(P.STARTING, 0, "ContainerCreating"), (P.RUNNING, 0, ""),
                             (P.FAILED, 137, "OOMKilled: exited with code 137")]),
    ("pods-deadline.json", [(P.RUNNING, 0, ""),
                            (P.FAILED, 0, "exceeded max runtime (activeDeadlineSeconds)")]),
    ("pods-unschedulable.json", [(P.STARTING, 0, "")]),  # may yet fit: keep waiting
])
def test_phase_sequences(fixture, expected):
    assert states(fixture) == expected


def test_image_pull_backoff_fails_like_a_command_that_cannot_start():
    creating, first_error, backoff = states("pods-imagepullbackoff.json")
    assert creating == (P.STARTING, 0, "ContainerCreating")
    assert first_error == (P.STARTING, 0, "ErrImagePull")  # the kubelet retries once
    phase, code, message = backoff
    assert (phase, code) == (P.FAILED, 127)
    assert message.startswith("could not start: ImagePullBackOff: Back-off pulling image")


def test_unknown_phase_changes_nothing():
    pod = load("pods-succeeded.json")["pods"][2]
    pod["status"]["phase"] = "Unknown"
    assert pod_state(deserialize(pod, "V1Pod")) is None


class Recorder:
    def __init__(self, name: str) -> None:
        self.name, self.seen, self.finished = name, [], False

    def observe(self, pod) -> None:
        self.seen.append(pod.status.phase if pod is not None else None)
        self.finished = pod is None

    @property
    def done(self) -> bool:
        return self.finished


def test_monitor_reports_gone_pods_and_survives_list_errors():
    listings = [OSError("apiserver unavailable"),
                {"items": [load("pods-succeeded.json")["pods"][2]]}, {"items": []}]

    def list_pods():
        item = listings.pop(0)
        if isinstance(item, Exception):
            raise item
        return deserialize({"apiVersion": "v1", "kind": "PodList", "metadata": {}, **item},
                           "V1PodList")

    monitor = PodMonitor(list_pods, interval=3600)
    recorder = Recorder("xj-j-7f3a-a1-r0")
    monitor._observers[recorder.name] = recorder  # no thread: rounds driven by hand
    for _ in range(3):
        monitor.poll_once()
    assert recorder.seen == ["Running", None]
    assert monitor._observers == {}
