"""Keep the executor's view of the cluster's nodes current: LIST, then WATCH.

A node that joins (or whose device plugin comes up late, the usual case on
a fresh GPU node) gets an agent without restarting the executor; a node
whose devices change (allocatable drops, cordon, NotReady) changes the
inventory its agent reports at the next heartbeat; a deleted node's agent
is shut down, so the control plane sees the node go and requeues its work.

The watch is the client's own ``kubernetes.watch.Watch`` over
``list_node``; it ends every ``timeout_s`` (the API server's limit) and
resumes from the last resourceVersion. An expired resourceVersion (410
Gone) or any other failure falls back to a fresh LIST, whose difference to
the view so far is reported like events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.kubernetes.inventory import NodeCache

log = logging.getLogger(__name__)

HTTP_GONE = 410


@dataclass(frozen=True)
class NodeChange:
    """What one event or relist changed, by Kubernetes node name."""

    added: frozenset[str] = frozenset()  # now has accelerators, had none (or was unknown)
    deleted: frozenset[str] = frozenset()  # the Node object is gone

    def __bool__(self) -> bool:
        return bool(self.added or self.deleted)


def _default_watch() -> Any:
    from kubernetes.watch import Watch  # the optional client, imported when used

    return Watch()


class NodeWatch:
    """Feeds a :class:`NodeCache` from the API server and reports changes."""

    def __init__(self, api: Any, cache: NodeCache, on_change: Callable[[NodeChange], None],
                 watch_factory: Callable[[], Any] = _default_watch, timeout_s: int = 300,
                 retry_s: float = 2.0) -> None:
        self.api = api
        self.cache = cache
        self.on_change = on_change
        self.watch_factory = watch_factory
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None

    # -- one step each (the loop's body; tests call them) ----------------------
    def relist(self) -> str:
        """LIST the nodes, replace the view, report the difference; the
        resourceVersion to watch from."""
        before = set(self.cache.nodes()) if self.cache.watched else None
        listing = self.api.list_node()
        self.cache.replace(listing.items)
        after = set(self.cache.nodes())
        if before is not None:
            listed = {n.metadata.name for n in listing.items}
            self._report(NodeChange(frozenset(after - before),
                                    frozenset(n for n in before if n not in listed)))
        return listing.metadata.resource_version or ""

    def watch_from(self, resource_version: str) -> str:
        """Apply events from ``resource_version`` until the watch ends; the
        last resourceVersion seen. Raises the client's ApiException (410 when
        the version expired)."""
        self._watch = self.watch_factory()
        for event in self._watch.stream(self.api.list_node, resource_version=resource_version,
                                        timeout_seconds=self.timeout_s):
            if self._stop.is_set():
                break
            kind, node = event.get("type"), event.get("object")
            if kind == "BOOKMARK" or node is None or not hasattr(node, "metadata"):
                continue
            resource_version = node.metadata.resource_version or resource_version
            self._apply(kind, node)
        return resource_version

    def _apply(self, kind: str, node: Any) -> None:
        name = node.metadata.name
        had = name in self.cache.nodes()
        self.cache.apply(kind, node)
        has = name in self.cache.nodes()
        log.info("node %s %s (%s accelerators)", name, kind.lower(), "with" if has else "no")
        if kind == "DELETED":
            self._report(NodeChange(deleted=frozenset({name})))
        elif has and not had:
            self._report(NodeChange(added=frozenset({name})))

    def _report(self, change: NodeChange) -> None:
        if not change:
            return
        try:
            self.on_change(change)
        except Exception:
            log.exception("handling node change %s failed", change)

    # -- the loop ----------------------------------------------------------------
    def start(self) -> None:
        """The first LIST now (errors propagate), then watch on a thread."""
        self.run_from(self.relist())

    def run_from(self, version: str) -> None:
        """Watch from ``version`` (a LIST's) on a thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True,
                                        name="xinhe-k8s-node-watch")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()

    def _run(self, version: str) -> None:
        while not self._stop.is_set():
            try:
                version = self.watch_from(version)
                continue
            except Exception as err:
                if getattr(err, "status", None) != HTTP_GONE:
                    log.warning("watching Kubernetes nodes failed: %s; listing again", err)
                    if self._stop.wait(self.retry_s):
                        return
            try:
                version = self.relist()
            except Exception as err:
                log.warning("listing Kubernetes nodes failed: %s", err)
                self._stop.wait(self.retry_s)
