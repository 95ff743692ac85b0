# Label Studio 1.23.2 from PyPI, for sites that cannot pull heartexlabs/label-studio (air-gapped, mirror-only)
# and for the project's end-to-end check (scripts/docker_e2e.sh). Same data path, port and user id as the
# official image, so docker-compose.yml runs it unchanged (LABEL_STUDIO_IMAGE=<this tag>):
#
#   DOCKER_BUILDKIT=1 docker build -f docker/label-studio.Dockerfile --build-arg BASE_IMAGE=debian:bookworm \
#       -t local/label-studio:1.23.2 docker
#
# BASE_IMAGE needs python3 >= 3.10 and apt. Behind a TLS-inspecting proxy: --secret id=proxy_ca,src=<pem>.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/label-studio/bin:$PATH
COPY with-proxy-ca.sh /usr/local/bin/with-proxy-ca
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=proxy_ca \
    python3 -m venv /opt/label-studio \
    && with-proxy-ca pip install label-studio==1.23.2 \
    && pip check

FROM ${BASE_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1001 labelstudio \
    && useradd --system --uid 1001 --gid 1001 --create-home --home-dir /home/labelstudio labelstudio \
    && mkdir -p /label-studio/data \
    && chown -R 1001:1001 /label-studio
COPY --from=build /opt/label-studio /opt/label-studio
ENV PATH=/opt/label-studio/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data
USER 1001:1001
WORKDIR /label-studio
EXPOSE 8080
VOLUME ["/label-studio/data"]
CMD ["label-studio", "start", "--no-browser", "--internal-host", "0.0.0.0", "-p", "8080", "--data-dir", "/label-studio/data"]
