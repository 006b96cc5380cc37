# export-worker: a small, non-root image whose entrypoint is `export-worker` (default
# command `run`). The same image runs the vendor simulators (`simulate ...`) and the
# request publisher (`produce ...`) in docker-compose.yml.
#
#   docker build -t export-worker:0.1.0 .
#   docker build -t export-worker:0.1.0 --build-arg EXTRAS=s3 .   # s3:// result store (boto3)
#
# Base image: pinned by version tag. For a reproducible build also pin the digest of the
# multi-architecture index, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
# (check it first: `docker buildx imagetools inspect python:3.11.14-slim-bookworm`;
# a digest names one build of the tag, so refresh it when taking base image updates).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a virtualenv with the package and its runtime dependencies only ----------
FROM ${PYTHON_IMAGE} AS builder

ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml, so editing the code does not re-download
# them. confluent-kafka and fastavro ship manylinux wheels: no compiler is needed.
COPY pyproject.toml README.md ./
RUN python -c "import os, sys, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
x = os.environ.get('EXTRAS', '').replace(',', ' ').split(); \
'dev' in x and sys.exit('the dev extra (test tools) does not belong in the image'); \
print('\\n'.join(p['dependencies'] + [d for e in x for d in p['optional-dependencies'][e]]))" \
    > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY worker ./worker
COPY schemas ./schemas
# Smoke-test the installed copy (-P: not the source tree in the working directory): the
# CLI imports and the Avro schemas were packaged.
RUN pip install --no-deps . \
    && python -P -c "import worker.cli, worker.codec; worker.codec.Codec()"

# ---- runtime ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="export-worker" \
      org.opencontainers.image.description="Kafka workers that run vendor export jobs" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
# /var/lib/export-worker is the state dir (one RocksDB per owned export.jobs partition)
# and holds the file:// result store; owned by the user, so a fresh named volume or
# emptyDir mounted there is writable (Docker copies the folder's owner into a new volume).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/export-worker/results \
    && chown -R 10001:10001 /var/lib/export-worker

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EXPORT_WORKER_LOG_FORMAT=json \
    EXPORT_WORKER_HTTP_PORT=8080 \
    EXPORT_WORKER_RESULT_STORE_URL=file:///var/lib/export-worker/results \
    EXPORT_WORKER_STATE_DIR=/var/lib/export-worker

WORKDIR /var/lib/export-worker
USER 10001:10001

# Side port: /healthz /readyz /metrics.
EXPOSE 8080

# The worker traps SIGTERM: it stops taking requests, lets in-flight vendor calls finish
# for up to 80% of EXPORT_WORKER_SHUTDOWN_GRACE_S (25 s), commits and leaves the group.
# Give it longer than that before SIGKILL: `docker stop -t 40`, compose
# `stop_grace_period: 40s`, Kubernetes `terminationGracePeriodSeconds: 40`.
STOPSIGNAL SIGTERM

# No curl in slim images: python's urllib. The side port opens once the worker has
# reached Kafka (topics checked), hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EXPORT_WORKER_HTTP_PORT', '8080'), timeout=4)"]

# Exec form: the worker is PID 1 and receives the stop signal itself.
ENTRYPOINT ["export-worker"]
CMD ["run"]
