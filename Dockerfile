# Build: FAISS is compiled from source (static), so the builder needs cmake, BLAS and LAPACK.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libopenblas-dev liblapack-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/ragpipe /usr/local/bin/ragpipe

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libopenblas0 liblapack3 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /data ragpipe
COPY --from=build /usr/local/bin/ragpipe /usr/local/bin/ragpipe
COPY workers.toml /etc/ragpipe/workers.toml
ENV RAGPIPE_CONFIG=/etc/ragpipe/workers.toml
USER ragpipe
ENTRYPOINT ["ragpipe"]
CMD ["worker"]
