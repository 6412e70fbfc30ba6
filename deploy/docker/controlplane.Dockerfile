# syntax=docker/dockerfile:1
# Xinhe control plane: `xinhe server` (gRPC API, store, scheduler on Ray).
# Build from the repository root (not built in CI: no container engine there):
#   docker build -f deploy/docker/controlplane.Dockerfile -t xinhe-controlplane:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: wheels of the project and its dependencies --------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
COPY agents ./agents
COPY protos ./protos
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime: the wheels installed into a venv, run as a non-root user ----
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 xinhe \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin xinhe \
 && mkdir -p /var/lib/xinhe && chown 10001:10001 /var/lib/xinhe
COPY --from=build /wheels /wheels
RUN python -m venv /opt/xinhe \
 && /opt/xinhe/bin/pip install --no-cache-dir --no-index --find-links /wheels xinhe-orchestrator \
 && rm -rf /wheels
ENV PATH=/opt/xinhe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XINHE_LISTEN=0.0.0.0:50051 \
    XINHE_DATA_DIR=/var/lib/xinhe
USER 10001:10001
VOLUME ["/var/lib/xinhe"]
EXPOSE 50051 9090
ENTRYPOINT ["xinhe"]
CMD ["server"]
