# drift-gate as a container: `docker run drift-gate --candidate /models/model.pt`
# runs the gate on a mounted candidate with the baked-in baselines/ and thresholds.toml.
#
#   docker build -t drift-gate .                                   # CPU torch
#   docker build --build-arg TORCH_VARIANT=cu130 -t drift-gate:cuda .   # CUDA torch
#   docker run --rm -v "$PWD/checkpoints-ci:/models:ro" -v "$PWD/data/phantoms:/data:ro" \
#       -v "$PWD/reports:/reports" drift-gate --candidate /models/mobilenet_v3_small/ft.pt
#
# Build arguments: BASE_IMAGE (a Debian-based image with python3 and venv, Python 3.11),
# TORCH_VARIANT / TORCH_INDEX_URL (where torch comes from), PIP_EXTRA_ARGS (e.g. a
# local --find-links), EXTRA_CA_CERTS (PEM text: a TLS-intercepting proxy's CA).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PIP_EXTRA_ARGS=""
ARG EXTRA_CA_CERTS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1
# Behind a TLS-intercepting proxy, pip must trust its CA (pip reads PIP_CERT, the system store).
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/drift-gate-extra.crt \
        && update-ca-certificates; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index, so that the package's requirement is already met.
# SC2086: PIP_EXTRA_ARGS holds several options and must split; DL3013: versions are pinned.
# hadolint ignore=SC2086,DL3013
RUN pip install --extra-index-url "$TORCH_INDEX_URL" $PIP_EXTRA_ARGS torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md /src/
COPY src /src/src
# SC2086 as above; DL3013: /src is this package (its dependencies are bounded in pyproject.toml).
# hadolint ignore=SC2086,DL3013
RUN pip install $PIP_EXTRA_ARGS /src && rm -rf /src

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/drift \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --system --uid 10001 --create-home --home-dir /home/drift drift \
    && mkdir -p /reports /data \
    && chown drift /reports
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY baselines /app/baselines
COPY thresholds.toml /app/thresholds.toml
USER 10001
# Later options win, so `--thresholds`, `--baselines`, `--data` or `--reports` given to
# `docker run` override these defaults (as do mounts over /app/...). Exit codes pass through.
ENTRYPOINT ["drift-gate", "gate", "--baselines", "/app/baselines", "--thresholds", "/app/thresholds.toml", "--data", "/data", "--reports", "/reports", "--no-progress"]
