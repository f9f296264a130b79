# qfa-deploy with the aarch64 cross compiler and qemu-user: the image CI uses to build latency tables.
# Every install step lives in scripts/install.sh, which .ci/run also runs outside Docker; the system
# stage installs the Debian packages it would otherwise fetch, llvm-16 (llvm-mca, for the simulated
# Raspberry Pi devices) included, with the apt caches cleared in the same layer.
#   docker build -t qfa-deploy .                                   # registry base image
#   docker build --build-arg BASE=qfa-deploy-base:bookworm ...      # offline base (ci/docker-base.sh)
# ci/docker.sh does both, and installs the Python packages from a wheelhouse it fills beforehand.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS system
# Every image and intermediate this file builds carries the label, so ci/docker.sh can remove the
# ones a rebuild leaves dangling (without it a CI runner's disk fills up, build after build).
LABEL org.qfa-deploy.ci-image=1
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv gcc g++ libc6-dev ca-certificates \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user debootstrap llvm-16 >/dev/null \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# The install in a stage of its own, so the wheelhouse it reads never reaches the final image's layers.
FROM system AS install
WORKDIR /opt/qfa-deploy
COPY . .
RUN if [ -d wheelhouse ]; then export QFA_WHEELHOUSE=/opt/qfa-deploy/wheelhouse; fi \
    && QFA_VENV=/opt/venv QFA_INSTALL=. bash scripts/install.sh \
    && rm -rf wheelhouse /root/.cache

FROM system
COPY --from=install /opt/venv /opt/venv
COPY --from=install /opt/qfa-deploy /opt/qfa-deploy
WORKDIR /opt/qfa-deploy
ENV PATH=/opt/venv/bin:$PATH
ENTRYPOINT ["qfa-deploy"]
CMD ["--help"]
