# qfa-deploy with the aarch64 cross compiler and qemu-user: the image CI uses to build latency tables.
# Every install step lives in scripts/install.sh, which .ci/run also runs outside Docker.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/qfa-deploy
COPY . .
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc g++ libc6-dev \
    && bash scripts/install.sh \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["qfa-deploy"]
CMD ["--help"]
