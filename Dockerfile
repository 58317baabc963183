# Multi-stage build of the allread binary. RocksDB's C++ build dominates the build time.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin allread

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/allread /usr/local/bin/allread
RUN useradd --system --home /var/lib/allread allread && mkdir -p /var/lib/allread && chown allread /var/lib/allread
USER allread
WORKDIR /var/lib/allread
ENV ALLREAD_STATE_DIR=/var/lib/allread/state
ENTRYPOINT ["allread"]
CMD ["run"]
