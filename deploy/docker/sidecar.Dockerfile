# syntax=docker/dockerfile:1
# The sidecar image. Build from the repository root:
#   docker build -f deploy/docker/sidecar.Dockerfile -t ghcr.io/bulwark-mesh/sidecar:0.1.0 .
# deploy/validate.sh checks that the builder runs the release build with CI's flags.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The commit the binaries name in bulwark_build_info and --version (.git is not sent):
#   --build-arg BULWARK_REVISION=$(git rev-parse --short=12 HEAD)
ARG BULWARK_REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p bulwark-sidecar --bins
# Keep the symbols (readable backtraces), drop the DWARF the release profile keeps for profiling.
RUN strip --strip-debug target/release/sidecar

# distroless: glibc and CA certificates, no shell, no package manager; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sidecar /usr/local/bin/sidecar
# Numeric, so that the kubelet can check runAsNonRoot.
USER 65532:65532
# admin, outbound, inbound
EXPOSE 15000 15001 15006
ENTRYPOINT ["/usr/local/bin/sidecar"]
