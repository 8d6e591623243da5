# syntax=docker/dockerfile:1
# The `worker` binary: `run` (everything), `ingress`, `consume`, `migrate`, `dlq`, ...

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# 1. Dependencies only: manifests plus empty sources, so this layer is rebuilt only when
#    Cargo.toml/Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
COPY entity/Cargo.toml entity/
COPY migration/Cargo.toml migration/
COPY worker/Cargo.toml worker/
COPY tests/Cargo.toml tests/
COPY bench/Cargo.toml bench/
RUN for crate in entity migration worker tests bench; do \
        mkdir -p $crate/src/bin && echo 'fn main() {}' > $crate/src/main.rs && touch $crate/src/lib.rs; \
    done \
    && for bin in worker_under_test migration_under_test; do echo 'fn main() {}' > tests/src/bin/$bin.rs; done \
    && cargo build --release --locked -p worker \
    && rm -rf entity migration worker tests bench

# 2. The source.
COPY . .
RUN touch entity/src/lib.rs migration/src/lib.rs migration/src/main.rs worker/src/lib.rs worker/src/main.rs \
    && cargo build --release --locked -p worker --bin worker

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin worker
COPY --from=build /src/target/release/worker /usr/local/bin/worker
USER worker
ENV LOG_FORMAT=json \
    METRICS_ADDR=0.0.0.0:9000 \
    INGRESS_ADDR=0.0.0.0:8080
EXPOSE 8080 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9000/healthz || exit 1
ENTRYPOINT ["worker"]
CMD ["run"]
