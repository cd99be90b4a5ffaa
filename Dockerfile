# syntax=docker/dockerfile:1
#
# One image for the whole shop: every <svc>-api, <svc>-worker and <svc>-migrator binary
# (18) in /usr/local/bin, run as the numeric non-root user 10001. What the Helm chart relies
# on (binary names, ports, user id, writable paths) is stated in
# helm/conveyor/image-contract.yaml; helm/tests/test_image_contract.py checks this file
# against it. Why one image and not six: README, "Install on Kubernetes".
#
#   docker build -t registry.example.com/conveyor:0.1.0 .
#
# Needs BuildKit (the default builder of Docker 23+) for the cache mounts.

ARG RUST_VERSION=1.95

# ---- build: compile the 18 binaries in release mode ------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# The binaries the image carries; must equal the contract's list.
ARG BINARIES="catalog-api catalog-worker catalog-migrator \
order-api order-worker order-migrator \
stock-api stock-worker stock-migrator \
payment-api payment-worker payment-migrator \
notification-api notification-worker notification-migrator \
coordinator-api coordinator-worker coordinator-migrator"

# Dependency caching: BuildKit cache mounts keep the registry and target/ between builds,
# so a source change recompiles only the workspace crates, not the dependencies. (A layer
# of stub sources would break with every new target a crate adds; the cache mounts do not.)
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo build --release --locked --bins \
        -p conveyor-catalog -p conveyor-order -p conveyor-stock -p conveyor-payment \
        -p conveyor-notification -p conveyor-coordinator -p conveyor-migrator; \
    mkdir -p /out; \
    for bin in $BINARIES; do cp "target/release/$bin" /out/; done

# ---- runtime: glibc and nothing else (no shell, no package manager) ---------------------
# The binaries need glibc and libgcc only: sqlx is built without TLS, reqwest without TLS.
FROM gcr.io/distroless/cc-debian12 AS runtime

LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Conveyor e-commerce backend: every <svc>-api, <svc>-worker and <svc>-migrator binary" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

COPY --from=build --chown=0:0 --chmod=0755 /out/ /usr/local/bin/

# Numeric user and group (image-contract.yaml: user), so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /tmp

# The contract's ports: APIs listen on 8080, workers on 9090 (set LISTEN_ADDR=0.0.0.0:<port>).
EXPOSE 8080 9090
ENV LOG_FORMAT=json

# No default program: the chart (or `docker run IMAGE <binary>`) names the binary to run.
ENTRYPOINT []
CMD ["catalog-api", "--help"]
