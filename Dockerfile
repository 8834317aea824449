# syntax=docker/dockerfile:1
# One image for the agent (`ark agent`, DaemonSet) and the hub (`ark hub`,
# Deployment).
#
# Build stage: cgo on, because the NVML probe goes through go-nvml, which
# loads libnvidia-ml.so.1 with dlopen at run time; the library itself comes
# from the NVIDIA container runtime on GPU nodes, never from this image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ENV CGO_ENABLED=1 CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations"
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ark ./cmd/ark

# Run stage: distroless with glibc (cgo and dlopen need it), no shell, no
# package manager. Non-root by default (uid 65532) for the hub; the agent's
# DaemonSet runs it as root with only the capabilities it needs.
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/ark /usr/bin/ark
USER 65532:65532
EXPOSE 9464 9465
ENTRYPOINT ["/usr/bin/ark"]
