"""Run a real Prometheus next to a local fleet (``xinhe demo --with-prometheus``
and the end-to-end test), and ask it questions over its HTTP API.

The binaries come from ``scripts/tools/prometheus.sh`` (Debian's
``prometheus`` package, linked into ``.tools/bin``) or from PATH. Each run
gets its own config, data directory and port, so a system Prometheus that
the package may have started is never touched.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "xinhe-alerts.yml"
CONTROL_PLANE_JOB = "xinhe-controlplane"
AGENTS_JOB = "xinhe-agents"


def find_tool(name: str) -> Path | None:
    """``.tools/bin/NAME`` of this checkout, else NAME on PATH, else None."""
    local = ROOT / ".tools" / "bin" / name
    if local.exists():
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def write_config(path: Path, control_plane: str, agents: Sequence[str],
                 scrape_interval: str = "1s", rules: Path | None = RULES) -> Path:
    """A Prometheus config scraping one control plane and the agents, with
    Xinhe's alert rules when the rules file exists (source checkouts)."""
    config: dict = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": CONTROL_PLANE_JOB, "static_configs": [{"targets": [control_plane]}]},
            {"job_name": AGENTS_JOB, "static_configs": [{"targets": list(agents)}]},
        ],
    }
    if rules is not None and rules.exists():
        config["rule_files"] = [str(rules)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class LocalPrometheus:
    """A Prometheus process with its own config, data dir and port."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    # -- HTTP API --------------------------------------------------------------
    def api(self, path: str, **params: str | float) -> dict:
        """GET /api/v1/<path>; returns ``data``. ValueError with Prometheus'
        own message when it refuses (e.g. a PromQL parse error)."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]


def start_prometheus(config: Path, data_dir: Path, port: int,
                     timeout: float = 60.0) -> LocalPrometheus:
    """Start prometheus on 127.0.0.1:port and wait until it is ready."""
    binary = find_tool("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus not found: run `bash scripts/tools/prometheus.sh` "
                                "(or install Debian's prometheus package)")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "prometheus.log"
    argv = [str(binary), f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    prom = LocalPrometheus(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("prometheus exited:\n" + prom.log_text()[-3000:])
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{prom.url}/-/ready", timeout=2) as r:
            if r.status == 200:
                return prom
        time.sleep(0.2)
    prom.stop()
    raise TimeoutError("prometheus did not become ready:\n" + prom.log_text()[-3000:])
