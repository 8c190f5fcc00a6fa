# syntax=docker/dockerfile:1
# xiaozhi voice server: CPU image with the embedded offline stack.
#   docker build -t xiaozhi-server .
#   docker run -p 8000:8000 -p 8003:8003 -v $PWD/data:/app/data -v $PWD/models:/app/models xiaozhi-server
# Build stage compiles llama.cpp and fills the virtualenv; the runtime stage has no compiler.
# The build stage's apt packages are scripts/install.sh's APT_PKGS (keep them the same), so the
# test suite also runs in it; `python -m server --doctor` checks an image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 XZ_VENV=/opt/venv \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git ca-certificates libopus0 espeak-ng \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# Dependencies first (this layer is reused while only the code changes).
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/install.sh
RUN mkdir -p server && touch server/__init__.py \
 && XZ_SKIP_APT=1 bash scripts/install.sh
COPY . .
# Re-run: the dependency step is stamped as done; this assembles the bundled Gemma GGUF into
# models/ (the editable install already points at /app).
RUN XZ_SKIP_APT=1 bash scripts/install.sh

FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus0 libgomp1 espeak-ng-data ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 xiaozhi
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=xiaozhi /app /app
WORKDIR /app
USER xiaozhi
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# data/ holds the override config (data/.config.yaml), the auth secret and memory; models/ holds
# any model you add. Mount both to keep them across upgrades (an empty models/ mount is fine:
# the bundled Gemma file is re-assembled there from its package on first start).
VOLUME ["/app/data", "/app/models"]
EXPOSE 8000 8003
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD curl -fsS http://127.0.0.1:8003/health || exit 1
CMD ["python", "-m", "server"]
