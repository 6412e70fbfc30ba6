"""gRPC servicers: decode, call a service, encode. Nothing else lives here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from controlplane.api.auth import Guard
from controlplane.api.errors import streaming, unary
from controlplane.api.submit_coalescer import from_front_end, item_message
from controlplane.services.admin import AdminService
from controlplane.services.auth import Authenticator
from controlplane.services.controller import Controller
from controlplane.services.submit_many import submit_many
from xinhe.v1 import admin_pb2, admin_pb2_grpc, agent_pb2_grpc, jobs_pb2, jobs_pb2_grpc


def _guard(controller: Controller, service: str) -> Guard:
    ctx = controller.ctx
    return Guard(Authenticator(ctx.store, ctx.settings.auth_token, ctx.clock), service)


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """Tenants see and touch only their own tenant's jobs (``tenant_scope``)."""

    def __init__(self, controller: Controller) -> None:
        self.jobs = controller.jobs
        self.migrations = controller.migrations
        self.guard = _guard(controller, "JobService")

    @unary
    def SubmitJob(self, request, context):
        who = self.guard(context, "SubmitJob")
        with self.guard.audited(who, "SubmitJob", request.spec.queue):
            job, created = self.jobs.submit(request.spec, request.client_key, who.tenant_scope)
        return jobs_pb2.SubmitJobResponse(job=job, created=created)

    @unary
    def SubmitJobs(self, request, context):
        # SubmitJob calls a front end batched are audited as what they were.
        single = from_front_end(context)
        method = "SubmitJob" if single else "SubmitJobs"
        who = self.guard(context, method)
        outcomes = submit_many(self.jobs, request.requests, who.tenant_scope)
        for item, outcome in zip(request.requests, outcomes, strict=True):
            if outcome.code == grpc.StatusCode.PERMISSION_DENIED:  # audited like SubmitJob
                self.guard.auth.denied(who, method, item.spec.queue,
                                       item_message(outcome.message) if single
                                       else outcome.message)
        return jobs_pb2.SubmitJobsResponse(results=[
            jobs_pb2.SubmitJobResult(job=o.job, created=o.created, error_code=o.code.value[0],
                                     error_message=o.message) for o in outcomes])

    @unary
    def GetJob(self, request, context):
        who = self.guard(context, "GetJob")
        return self.jobs.get(request.job_id, who.tenant_scope)

    @unary
    def ListJobs(self, request, context):
        who = self.guard(context, "ListJobs")
        jobs, token = self.jobs.list(list(request.states), request.queue, request.page_size,
                                     request.page_token, who.tenant_scope)
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    @unary
    def CancelJob(self, request, context):
        who = self.guard(context, "CancelJob")
        return self.jobs.cancel(request.job_id, request.reason, who.tenant_scope)

    @unary
    def MigrateJob(self, request, context):
        who = self.guard(context, "MigrateJob")
        # Not ToTimedelta(): it overflows on extreme values the service refuses.
        timeout = request.checkpoint_timeout.seconds + request.checkpoint_timeout.nanos / 1e9
        return self.migrations.migrate(request.job_id, request.target, request.reason,
                                       who.tenant_scope, timeout)

    @streaming
    def WatchJob(self, request, context):
        who = self.guard(context, "WatchJob")
        yield from self.jobs.watch(request.job_id, request.after_sequence, request.follow,
                                   context.is_active, who.tenant_scope)

    @streaming
    def StreamLogs(self, request, context):
        who = self.guard(context, "StreamLogs")
        rank = request.rank if request.filter_rank else None
        yield from self.jobs.logs(request.job_id, request.after_sequence, request.follow, rank,
                                  context.is_active, who.tenant_scope)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.admin = AdminService(controller.ctx)
        self.guard = _guard(controller, "AdminService")

    @unary
    def ListNodes(self, request, context):
        self.guard(context, "ListNodes")
        return admin_pb2.ListNodesResponse(nodes=self.admin.nodes(request.pool))

    @unary
    def ListPools(self, request, context):
        self.guard(context, "ListPools")
        return admin_pb2.ListPoolsResponse(pools=self.admin.pools())

    @unary
    def CordonNode(self, request, context):
        who = self.guard(context, "CordonNode")
        node = self.admin.cordon(request.node, True, request.reason or "cordoned")
        self.guard.admin_action(who, "CordonNode", request.node, request.reason)
        return node

    @unary
    def UncordonNode(self, request, context):
        who = self.guard(context, "UncordonNode")
        node = self.admin.cordon(request.node, False, "")
        self.guard.admin_action(who, "UncordonNode", request.node)
        return node

    @unary
    def GetClusterSummary(self, request, context):
        self.guard(context, "GetClusterSummary")
        return self.admin.summary()


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.sessions = controller.agents
        self.guard = _guard(controller, "AgentService")

    @unary
    def Register(self, request, context):
        who = self.guard(context, "Register")
        with self.guard.audited(who, "Register", request.node_name):
            who.check_node(request.node_name)
        return self.sessions.register(request)

    @streaming
    def Connect(self, request_iterator: Iterator, context: grpc.ServicerContext):
        who = self.guard(context, "Connect")
        with self.guard.audited(who, "Connect", who.node):
            yield from self.sessions.connect(request_iterator, context.is_active,
                                             authorize=who.check_node)
