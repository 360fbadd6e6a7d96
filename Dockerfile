# outbox-relay container image.
# Build: docker build -t outbox-relay .
# Run:   docker run -e OUTBOX_RELAY_DATABASE__URL=... -e OUTBOX_RELAY_BROKER__RABBITMQ__URL=... outbox-relay
# No configuration or secrets are baked in: pass them as OUTBOX_RELAY_* variables or mount a
# TOML file and set OUTBOX_RELAY_CONFIG.

FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /src

# Dependency layer: built from the manifests alone, reused until Cargo.toml/Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo '' > src/lib.rs \
 && echo 'fn main() {}' > benches/relay.rs \
 && cargo build --release --locked --bin outbox-relay \
 && rm -rf src benches

# The relay itself (migrations are embedded into the binary).
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin outbox-relay \
 && cp target/release/outbox-relay /outbox-relay

# Runtime: distroless with glibc and CA certificates, non-root, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /outbox-relay /usr/local/bin/outbox-relay
ENV OUTBOX_RELAY_LOG__FORMAT=json \
    OUTBOX_RELAY_METRICS__LISTEN=0.0.0.0:9090
USER 65532:65532
EXPOSE 9090
# Exec form: the relay is PID 1 and receives SIGTERM directly.
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
