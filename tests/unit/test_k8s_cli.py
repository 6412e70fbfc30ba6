"""``xinhe agent --executor kubernetes``: the flags, and the chart that passes them."""

from __future__ import annotations

import pytest

from agents import main as agent_main
from controlplane.cli.main import build_parser
from tests.deploy.chart import containers, of_kind, render_case


def test_executor_flags_parse():
    args = build_parser().parse_args([
        "agent", "--executor", "kubernetes", "--namespace", "jobs", "--kubeconfig", "/k",
        "--image", "reg/base:1", "--family-image", "ascend=reg/ascend:8"])
    assert (args.executor, args.namespace, args.kubeconfig) == ("kubernetes", "jobs", "/k")
    assert (args.image, args.family_image) == ("reg/base:1", ["ascend=reg/ascend:8"])
    assert build_parser().parse_args(["agent"]).executor == "process"


def test_the_charts_executor_deployment_passes_the_real_flags():
    docs = render_case("executor-pod-network")
    (executor,) = [d for d in of_kind(docs, "Deployment")
                   if d["metadata"]["labels"]["app.kubernetes.io/component"] == "k8s-executor"]
    args = build_parser().parse_args(containers(executor)[0]["args"])
    assert (args.command, args.executor, args.namespace) == ("agent", "kubernetes", "xinhe")
    (role,) = [d for d in of_kind(docs, "Role") if d["metadata"]["name"].endswith("k8s-executor")]
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("pods", "create"), ("pods", "delete"), ("pods", "list"), ("pods/log", "get"),
            ("services", "create"), ("services", "delete")} <= granted


def test_unreadable_kubeconfig_is_a_clear_exit(tmp_path, caplog):
    missing = tmp_path / "no-such-kubeconfig"
    code = agent_main.main(["--executor", "kubernetes", "--kubeconfig", str(missing),
                            "--work-dir", str(tmp_path)])
    assert code == 2
    assert str(missing) in caplog.text


@pytest.mark.parametrize("flag", ["--family-image=oops"])
def test_bad_family_image_is_a_clear_exit(tmp_path, caplog, flag):
    code = agent_main.main(["--executor", "kubernetes", flag, "--work-dir", str(tmp_path)])
    assert code == 2 and "FAMILY=IMAGE" in caplog.text
