# regionscribe: one image for every process (web server, inference/training/ingest workers, doctor).
#
#   docker build -t regionscribe .
#   docker run --rm regionscribe --help
#   docker compose up           (see docker-compose.yml)
#
# Every dependency comes from requirements.lock (exact versions and hashes, `make lock` refreshes it); torch from PyPI
# as the project pins it. On x86_64 Linux PyPI's torch wheel is the CUDA build (it pulls the
# nvidia-* runtime wheels, about 5 GB), so the same image runs on a GPU (with the NVIDIA container toolkit on the host)
# and on a CPU. A smaller CPU-only image would install torch/torchvision from PyTorch's CPU wheel index first; that
# index is not reachable from where this file was written, so it is not wired in here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: a change to the sources does not reinstall torch.
COPY requirements.lock ./
RUN pip install pip==25.3 && pip install --require-hashes -r requirements.lock

# The project itself (model/default, the embedded checkpoint, is package data and comes along).
COPY pyproject.toml README.md ./
COPY model ./model
COPY backend ./backend
COPY training ./training
COPY labeling_configs ./labeling_configs
RUN pip install --no-deps . && rm -rf build *.egg-info

# Non-root user. The folders below are mount points of docker-compose.yml's named volumes: a fresh named volume
# copies their ownership, so the user can write the store, the image cache and the registry.
RUN useradd --create-home --uid 10001 --user-group regionscribe \
    && mkdir -p /var/lib/regionscribe/data/images /var/lib/regionscribe/registry /images \
    && chown -R regionscribe:regionscribe /var/lib/regionscribe /images
USER regionscribe

ENV HOST=0.0.0.0 \
    PORT=9090 \
    DATA_DIR=/var/lib/regionscribe/data \
    REGISTRY_DIR=/var/lib/regionscribe/registry

EXPOSE 9090
ENTRYPOINT ["regionscribe"]
CMD ["serve"]
