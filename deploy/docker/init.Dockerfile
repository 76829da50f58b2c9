# syntax=docker/dockerfile:1
# The bulwark-init image: the init container that installs a pod's capture rules. Build from the
# repository root:
#   docker build -f deploy/docker/init.Dockerfile -t ghcr.io/bulwark-mesh/init:0.1.0 .
# deploy/validate.sh checks that the builder runs the release build with CI's flags.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The commit the binaries name in bulwark_build_info and --version (.git is not sent):
#   --build-arg BULWARK_REVISION=$(git rev-parse --short=12 HEAD)
ARG BULWARK_REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p bulwark-init --bins
RUN strip --strip-debug target/release/bulwark-init

# Not distroless: bulwark-init drives iptables-save and iptables-restore, of both backends
# (nf_tables and legacy), which Debian's iptables package brings. It runs once, as root with
# NET_ADMIN and NET_RAW, before anything else in the pod starts.
FROM debian:bookworm-slim
# Debian's stable security updates replace package versions: a pinned version would stop
# building; the base image tag is what fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/bulwark-init /usr/local/bin/bulwark-init
# iptables needs root in the pod's network namespace (the pod spec says so too): the one
# Bulwark image that runs as root, and only until the rules are in.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/bulwark-init"]
