# syntax=docker/dockerfile:1
# Multi-stage build of the relay: a full Rust toolchain builds the binary, a slim
# Debian runtime runs it as a non-root user.
#
# Build:  docker build -t relay .
# Run:    docker run --env-file .env.local -p 3000:3000 relay
#
# The build stage's command line is the one `scripts/docker-build-check` runs on
# machines without a Docker engine, so the two cannot drift apart.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY loadtest ./loadtest
COPY tests ./tests
RUN cargo build --release --locked --package relay --bin relay

FROM debian:bookworm-slim AS runtime
# ca-certificates: rediss:// to a Redis with a public certificate checks the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /src/target/release/relay /usr/local/bin/relay
USER 10001
ENV PORT=3000 \
    RELAY_HOST=0.0.0.0
EXPOSE 3000
# SIGTERM (Docker's default stop signal) reaches the relay as PID 1 and drains it;
# give `docker stop` a timeout longer than RELAY_DRAIN_TIMEOUT (10 s).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/relay", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/relay"]
CMD ["serve"]
