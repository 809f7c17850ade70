# The vibe_assets image of docker-compose.yml: the code location's gRPC code server (`user-code`,
# where runs execute: default run launcher), and the Dagster webserver and daemon (one image, so
# every Dagster process runs the same release).
#
#   docker build -t vibe-assets:local .                                   # CPU torch (default)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 \
#       -t vibe-assets:local-cuda .                                       # CUDA torch (gpu profile)
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIBE_HOME=/data/vibe \
    DAGSTER_HOME=/opt/dagster/home

# torch first, from PyTorch's own index (the CPU build is ~200 MB instead of ~2.5 GB with CUDA),
# within pyproject.toml's bounds so that `pip install .` keeps it.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.3,<=2.14.1" "torchvision>=0.18,<=0.29.1"

WORKDIR /opt/vibe_assets
COPY pyproject.toml README.md ./
COPY vibe_assets ./vibe_assets
RUN pip install .
COPY workspace.yaml workspace.compose.yaml dagster.yaml dagster.postgres.yaml ./

# Not root: the photo library is mounted read-only and VIBE_HOME is a volume this user owns.
RUN useradd --create-home --uid 1000 vibe \
    && mkdir -p /data/vibe /opt/dagster/home/storage \
    && chown -R vibe:vibe /data/vibe /opt/dagster/home
USER vibe

EXPOSE 4000
CMD ["dagster", "api", "grpc", "--module-name", "vibe_assets.definitions", "--host", "0.0.0.0", "--port", "4000"]
