# syntax=docker/dockerfile:1
# Vantage agent image:  docker build -t vantage .
#
# The build stage installs the project (with the grpc extra) and its dependencies, from the
# project's own metadata, into a virtual environment; the runtime stage is a slim Python with that
# environment and nothing else: no compiler, no curl, no shell use at run time. It runs as a
# non-root user, works with a read-only root file system (nothing is written outside /tmp, and the
# image has no bytecode left to compile), and handles SIGTERM itself: exec-form entry point.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/vantage
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY plugins ./plugins
# The project itself: its dependencies are pinned by its metadata's ranges.
# hadolint ignore=DL3013
RUN /opt/vantage/bin/pip install ".[grpc]" \
    && /opt/vantage/bin/python -m compileall -q /opt/vantage

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="vantage" \
      org.opencontainers.image.description="Synthetic monitoring of third-party integrations, with OpenTelemetry metrics and traces" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin vantage
COPY --from=build /opt/vantage /opt/vantage
ENV PATH=/opt/vantage/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VANTAGE_HOST=0.0.0.0 \
    VANTAGE_PORT=8080
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=6s --start-period=30s --retries=3 CMD ["vantage", "healthcheck"]
ENTRYPOINT ["vantage"]
CMD ["run"]
