"""gRPC servicers: decode, call a service, encode. Nothing else lives here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from controlplane.api.auth import require_token
from controlplane.api.errors import streaming, unary
from controlplane.services.admin import AdminService
from controlplane.services.controller import Controller
from xinhe.v1 import admin_pb2, admin_pb2_grpc, agent_pb2_grpc, jobs_pb2, jobs_pb2_grpc


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.jobs = controller.jobs
        self.token = controller.ctx.settings.auth_token

    @unary
    def SubmitJob(self, request, context):
        require_token(context, self.token)
        job, created = self.jobs.submit(request.spec, request.client_key)
        return jobs_pb2.SubmitJobResponse(job=job, created=created)

    @unary
    def GetJob(self, request, context):
        require_token(context, self.token)
        return self.jobs.get(request.job_id)

    @unary
    def ListJobs(self, request, context):
        require_token(context, self.token)
        jobs, token = self.jobs.list(list(request.states), request.queue, request.page_size,
                                     request.page_token)
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    @unary
    def CancelJob(self, request, context):
        require_token(context, self.token)
        return self.jobs.cancel(request.job_id, request.reason)

    @streaming
    def WatchJob(self, request, context):
        require_token(context, self.token)
        yield from self.jobs.watch(request.job_id, request.after_sequence, request.follow,
                                   context.is_active)

    @streaming
    def StreamLogs(self, request, context):
        require_token(context, self.token)
        rank = request.rank if request.filter_rank else None
        yield from self.jobs.logs(request.job_id, request.after_sequence, request.follow, rank,
                                  context.is_active)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.admin = AdminService(controller.ctx)
        self.token = controller.ctx.settings.auth_token

    @unary
    def ListNodes(self, request, context):
        require_token(context, self.token)
        return admin_pb2.ListNodesResponse(nodes=self.admin.nodes(request.pool))

    @unary
    def ListPools(self, request, context):
        require_token(context, self.token)
        return admin_pb2.ListPoolsResponse(pools=self.admin.pools())

    @unary
    def CordonNode(self, request, context):
        require_token(context, self.token)
        return self.admin.cordon(request.node, True, request.reason or "cordoned")

    @unary
    def UncordonNode(self, request, context):
        require_token(context, self.token)
        return self.admin.cordon(request.node, False, "")

    @unary
    def GetClusterSummary(self, request, context):
        require_token(context, self.token)
        return self.admin.summary()


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.sessions = controller.agents
        self.token = controller.ctx.settings.auth_token

    @unary
    def Register(self, request, context):
        require_token(context, self.token)
        return self.sessions.register(request)

    @streaming
    def Connect(self, request_iterator: Iterator, context: grpc.ServicerContext):
        require_token(context, self.token)
        yield from self.sessions.connect(request_iterator, context.is_active)
