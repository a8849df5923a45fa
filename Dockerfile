# stemify, CPU image. Builds with `docker build .` and `podman build --format docker .`
# (podman's default OCI format drops HEALTHCHECK).
#
#   docker build -t stemify .                              # htdemucs baked in, CPU torch
#   docker build --build-arg MODELS="htdemucs mdx_extra" -t stemify .
#
# BASE_IMAGE: any Debian bookworm image; the official Python one by default, or a plain Debian
# (Python then comes from Debian's python3 packages, which are 3.11 on bookworm).
# TORCH_INDEX_URL: where the CPU build of torch comes from; PyPI's torch is the CUDA build,
# which the lock's `torch==2.13.0+cpu` refuses, so the image can never carry CUDA by accident.
# Empty: only PyPI and PIP_FIND_LINKS (a folder holding the wheel, mounted with -v at build).
# PIP_CERT: a CA bundle for pip behind a TLS-inspecting proxy (mount it; it is not copied).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
SHELL ["/bin/sh", "-eux", "-c"]
# A Debian base has no Python: take Debian's (venv needs python3-venv there).
RUN if ! python3 -c "import ensurepip" 2>/dev/null; then \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/stemify/venv
ENV PATH=/opt/stemify/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PROGRESS_BAR=off \
    PYTHONDONTWRITEBYTECODE=1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_CERT
ARG PIP_FIND_LINKS
WORKDIR /build
# The lock first: the dependency layer stays cached while only the source changes.
COPY requirements.lock pyproject.toml ./
# Runtime dependencies only, at the lock's versions (the lock also pins the dev tools, which
# the image does not need): the project's own requirements, constrained by the lock.
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\\n')" > runtime.txt; \
    pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c requirements.lock -r runtime.txt
COPY README.md ./
COPY src ./src
# torch's own tests and C++ headers (145 MB) serve nothing at run time.
RUN pip install --no-deps . && pip check; \
    site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
    rm -rf "$site/torch/test" "$site/torch/include"

# Models are pulled (sha256-verified) into a directory of the image that no volume hides, so a
# container separates at once and with no network. MODELS_BASE_URL: a mirror of demucs' release
# host; MODEL_CATALOGUE: a YAML of extra models (a path mounted at build, or empty).
ARG MODELS="htdemucs"
ARG MODELS_BASE_URL=https://dl.fbaipublicfiles.com/demucs/
ARG MODEL_CATALOGUE
# Each HTDemucs model is also exported for the onnx backend here (checked against PyTorch), so
# no container spends its first job exporting (the model directory is read-only at run time);
# the other architectures run on torch and say so.
RUN if [ -n "$MODEL_CATALOGUE" ]; then export STEMIFY_MODEL_CATALOGUE="$MODEL_CATALOGUE"; fi; \
    for model in $MODELS; do \
        stemify models pull --model-dir /opt/stemify/models --base-url "$MODELS_BASE_URL" "$model"; \
        stemify models export --model-dir /opt/stemify/models "$model" \
            || echo "$model: no onnx export, it runs on torch"; \
    done


FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/sh", "-eux", "-c"]
# ffmpeg decodes and encodes audio; python3 only where the base has none (the venv links to it).
RUN apt-get update -qq; \
    python=""; command -v python3 >/dev/null || python=python3; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg $python; \
    rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/*; \
    groupadd --system --gid 10001 stemify; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/stemify --create-home \
        --shell /usr/sbin/nologin stemify
COPY --from=build /opt/stemify/venv /opt/stemify/venv
COPY --from=build /opt/stemify/models /opt/stemify/models
ENV PATH=/opt/stemify/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STEMIFY_MODEL_DIR=/opt/stemify/models \
    STEMIFY_DATA_DIR=/var/lib/stemify \
    STEMIFY_AUTO_PULL=false \
    STEMIFY_LOG_FORMAT=json \
    STEMIFY_DEVICE=cpu \
    HEALTHCHECK_PORT=8000
USER 10001:10001
WORKDIR /var/lib/stemify
EXPOSE 8000
# Liveness of the API (`serve`); a worker container has no HTTP port: compose and Kubernetes
# give workers their own check. HEALTHCHECK_PORT follows a `serve --port` other than 8000.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['HEALTHCHECK_PORT'] + '/api/v1/health', timeout=4)"]
ENTRYPOINT ["stemify"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
