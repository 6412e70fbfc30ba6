# syntax=docker/dockerfile:1
# Xinhe node agent: `xinhe agent`. Job replicas run inside this container, so
# build it FROM the framework image of the vendor it serves (the vendor's
# query tool and driver come from the host, mounted by the Helm chart):
#   docker build -f deploy/docker/agent.Dockerfile -t xinhe-agent:0.1.0 .
#   docker build -f deploy/docker/agent.Dockerfile \
#     --build-arg BASE_IMAGE=<vendor pytorch image with python >= 3.11> -t xinhe-agent-ascend .
# Not built in CI: there is no container engine there.
ARG BUILD_IMAGE=python:3.11-slim-bookworm
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: a wheel of the project (the agent needs no compiler) -----------
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
COPY agents ./agents
COPY protos ./protos
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: installed with the base image's own python -------------------
FROM ${BASE_IMAGE}
COPY --from=build /wheels /wheels
# A venv over the base's site-packages keeps the vendor's torch visible to jobs.
RUN python3 -m venv --system-site-packages /opt/xinhe \
 && /opt/xinhe/bin/pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && (getent group 10001 || groupadd --gid 10001 xinhe) \
 && (getent passwd 10001 || useradd --uid 10001 --gid 10001 --no-create-home \
      --home-dir /tmp --shell /usr/sbin/nologin xinhe)
ENV PATH=/opt/xinhe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Non-root by default; the chart runs families whose query tool needs root
# (npu-smi, cnmon ...) as root, with no capabilities.
USER 10001:10001
WORKDIR /var/lib/xinhe-agent
EXPOSE 9101
ENTRYPOINT ["xinhe"]
CMD ["agent"]
