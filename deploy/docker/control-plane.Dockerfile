# syntax=docker/dockerfile:1
# The control-plane image, with meshctl beside it (`kubectl exec deploy/bulwark-control-plane
# -n bulwark -- meshctl status` talks to the replica on 127.0.0.1:8080). Build from the
# repository root:
#   docker build -f deploy/docker/control-plane.Dockerfile -t ghcr.io/bulwark-mesh/control-plane:0.1.0 .
# deploy/validate.sh checks that the builder runs the release build with CI's flags.

FROM rust:1.95-bookworm AS build
# etcd-client's build script runs protoc on etcd's protos, which need the well-known types.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The commit the binaries name in bulwark_build_info and --version (.git is not sent):
#   --build-arg BULWARK_REVISION=$(git rev-parse --short=12 HEAD)
ARG BULWARK_REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p bulwark-control-plane -p meshctl --bins
# Keep the symbols (readable backtraces), drop the DWARF the release profile keeps for profiling.
RUN strip --strip-debug target/release/control-plane target/release/meshctl

# distroless: glibc and CA certificates, no shell, no package manager; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/control-plane /usr/local/bin/control-plane
COPY --from=build /src/target/release/meshctl /usr/local/bin/meshctl
# Numeric, so that the kubelet can check runAsNonRoot.
USER 65532:65532
# REST API, gRPC (API and sidecars), injection webhook
EXPOSE 8080 8081 8443
ENTRYPOINT ["/usr/local/bin/control-plane"]
