# syntax=docker/dockerfile:1
# fleet-bridge container image (SPEC §10).
#   docker build -t fleet-bridge:0.1.0 .
#   docker run -e FLEET_API_KEY=… -e FLEET_TOKEN=… -e BRIDGE_UPSTREAM__BASE_URL=https://… \
#     -v fleet-bridge-data:/data -p 8080:8080 fleet-bridge:0.1.0
# Linted in CI by scripts/check-packaging (hadolint).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a self-contained virtualenv with the project and its locked dependencies
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/fleet-bridge
ENV PATH=/opt/fleet-bridge/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md image-requirements.txt ./
COPY bridge ./bridge
# image-requirements.txt (scripts/lock-image-requirements) pins every package, the build
# backend included, to the versions constraints.txt tests and to the sha256 of their
# wheels: a package swapped on the index fails the build. The project itself is built
# from the copied source with no further downloads.
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: -r image-requirements.txt \
 && pip install --no-cache-dir --no-deps --no-build-isolation . \
 && fleet-bridge version

# ---- runtime: the venv, a non-root user, nothing else
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="fleet-bridge" \
      org.opencontainers.image.description="Polls the VisionMax fleet safety API and pushes notifications to webhooks, Slack and MQTT" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/fleet-bridge/bin:$PATH \
    BRIDGE_CONFIG=/etc/fleet-bridge/config.yaml
RUN groupadd --system --gid "${GID}" fleet-bridge \
 && useradd --system --uid "${UID}" --gid "${GID}" --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin fleet-bridge \
 && mkdir -p /data \
 && chown "${UID}:${GID}" /data
COPY --from=build /opt/fleet-bridge /opt/fleet-bridge
COPY config/container.yaml /etc/fleet-bridge/config.yaml
USER ${UID}:${GID}
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# slim has no curl: probe /healthz with the interpreter already in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:8080/healthz'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["fleet-bridge"]
CMD ["run"]
