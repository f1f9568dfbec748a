# Image for kibo-token-sidecar. Two stages: the builder installs the package
# into a virtualenv with the same `pip install .` step that CI runs, and the
# runtime stage copies only that virtualenv onto a fresh slim Python base, so
# pip's cache, build backends and source files stay behind.
#
#   docker build -t kibo-token-sidecar:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# The virtualenv lives at the same path in both stages because its scripts
# and pyvenv.cfg record absolute paths.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore admits only the files that the package build reads.
COPY . .
RUN pip install --no-cache-dir . \
    && python -m compileall -q /opt/venv/lib


FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kibo-token-sidecar" \
      org.opencontainers.image.description="Sidecar proxy that keeps Kibo Commerce API tokens fresh and adds them to an app's requests" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

COPY --from=builder /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the Helm
# chart, and the builder already compiled the bytecode. PYTHONSAFEPATH keeps
# `python -m` from putting the working directory on sys.path.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1

# A numeric user, so Kubernetes can verify runAsNonRoot without an
# /etc/passwd entry.
USER 10001:10001

# 8080: the proxy (the sidecar binds it to 127.0.0.1 by default, so only
# containers in the same pod reach it). 9090: metrics and health probes.
EXPOSE 8080 9090

# No HEALTHCHECK: Kubernetes probes /livez and /readyz on port 9090 instead.
ENTRYPOINT ["python", "-m", "sidecar"]
