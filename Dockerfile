# syntax=docker/dockerfile:1
#
# One image for every framestats process: `worker` (the default command), `producer`,
# and Flower (`celery -A worker.app:app flower`). See docs/deploy.md.
#
# The base image already holds a CUDA build of torch; installing the project's
# dependencies on top must never replace it (pip would pull the generic CUDA wheel
# from PyPI), so torch is pinned to the version the base image ships.
# The CUDA 12.6 build runs on NVIDIA drivers >= 560 (>= 525 through CUDA's minor-version
# compatibility); pick a -cuda12.8 or -cuda13.x tag for Blackwell GPUs:
#   docker compose build --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# ---------------------------------------------------------------------------------------
# Stage 1: hdf5plugin from source. The wheel on PyPI is built without AVX2 and without
# OpenMP "to maximize compatibility" (hdf5plugin docs, Installation from source), and
# bitshuffle-LZ4 decompression of Eiger frames is the worker's hot path on the CPU side.
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS hdf5plugin-build

ARG HDF5PLUGIN_VERSION=7.1.0

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

# HDF5PLUGIN_NATIVE=False: without it the build adds -march=native and the image only
# runs on CPUs like the one that built it. AVX2 (which needs SSE2) is then enabled
# explicitly, AVX512 explicitly off, because probing the build host would otherwise bake
# AVX512 code into an image that must run on any x86-64 host with AVX2 (Haswell / Zen 1
# and later).
RUN HDF5PLUGIN_AVX2=True \
    HDF5PLUGIN_OPENMP=True \
    HDF5PLUGIN_NATIVE=False \
    HDF5PLUGIN_SSE2=True \
    HDF5PLUGIN_SSSE3=True \
    HDF5PLUGIN_AVX512=False \
    python3 -m pip wheel --no-deps --no-binary hdf5plugin --wheel-dir /wheels \
        "hdf5plugin==${HDF5PLUGIN_VERSION}"

# ---------------------------------------------------------------------------------------
# Stage 2: the runtime image.
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

# Files the workers write under /data belong to this uid; set it to your own
# (APP_UID=$(id -u) in .env) so outputs on the bind mount are yours.
ARG APP_UID=10001
ARG APP_GID=10001

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    DATA_ROOT=/data

# libgomp1: the OpenMP runtime the hdf5plugin filters are linked against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu-based images ship a user 'ubuntu' with uid/gid 1000; make room when APP_UID
# or APP_GID asks for an id that is taken.
RUN set -eux; \
    taken_user="$(getent passwd "${APP_UID}" | cut -d: -f1)"; \
    if [ -n "${taken_user}" ]; then userdel --remove "${taken_user}" 2>/dev/null || userdel "${taken_user}"; fi; \
    taken_group="$(getent group "${APP_GID}" | cut -d: -f1)"; \
    if [ -n "${taken_group}" ]; then groupdel "${taken_group}"; fi; \
    groupadd --gid "${APP_GID}" framestats; \
    useradd --uid "${APP_UID}" --gid "${APP_GID}" --create-home --shell /usr/sbin/nologin framestats; \
    mkdir -p /data; \
    chown framestats:framestats /data

# Dependencies first (cached while only the code changes): the hdf5plugin wheel from
# stage 1, then the project's dependencies and the dashboard extra (Flower), read from
# pyproject.toml, with torch held at the base image's build.
COPY --from=hdf5plugin-build /wheels /tmp/wheels
COPY pyproject.toml /tmp/src/
RUN set -eux; \
    python3 -c "import sys; assert sys.version_info >= (3, 11), sys.version"; \
    python3 -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt; \
    python3 -c "import tomllib; p = tomllib.load(open('/tmp/src/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['dashboard']))" > /tmp/requirements.txt; \
    python3 -m pip install -c /tmp/constraints.txt /tmp/wheels/hdf5plugin-*.whl; \
    python3 -m pip install -c /tmp/constraints.txt -r /tmp/requirements.txt; \
    python3 -c "import hdf5plugin; c = hdf5plugin.get_config().build_config; print(c); assert c.avx2 and c.openmp, 'hdf5plugin was not built with AVX2 and OpenMP'"; \
    rm -rf /tmp/wheels /tmp/requirements.txt

# The code. README.md* is optional (pyproject names it as the long description).
COPY pyproject.toml README.md* /tmp/src/
COPY framestats /tmp/src/framestats
COPY producer /tmp/src/producer
COPY worker /tmp/src/worker
RUN set -eux; \
    python3 -m pip install -c /tmp/constraints.txt --no-deps /tmp/src; \
    rm -rf /tmp/src /tmp/constraints.txt; \
    command -v worker; \
    command -v producer; \
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

USER framestats
WORKDIR /home/framestats

# `worker health`: the broker answers and this host's worker heartbeat is fresh. Services
# that are not workers (flower, metrics, producer) set their own check in compose.
# start-period covers CUDA initialisation and the first heartbeat.
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["worker", "health"]

# SIGTERM (Docker's default stop signal) is the worker's warm shutdown: it finishes the
# running chunk; give it time with stop_grace_period (compose) or `docker stop -t`.
STOPSIGNAL SIGTERM
CMD ["worker"]
