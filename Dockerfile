# runner in a container: `runner` is the entrypoint, so the command picks the role:
#   docker run --rm IMAGE broker        (RUNNER_BIND, RUNNER_JOURNAL)
#   docker run --rm IMAGE worker        (RUNNER_BROKER, RUNNER_PROCESSES, RUNNER_THREADS, RUNNER_IMPORTS)
#   docker run --rm IMAGE status --connect tcp://HOST:5555
#   docker run --rm -v KEYS:/keys IMAGE keys generate /keys      (RUNNER_CURVE_KEYS=/keys for the others)
#
# BASE_IMAGE is any image with Python 3.10+ and pip on PATH as `python` and `pip`: the
# official slim image by default, or a local one where that cannot be pulled
# (tests/compose/make_base_image.sh builds one with debootstrap).
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: build wheels for runner and everything it depends on.
FROM ${BASE_IMAGE} AS wheels
LABEL org.opencontainers.image.title="runner"
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

# Stage 2: the image that runs: the wheels installed, no build tools, no source tree.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="runner" \
      org.opencontainers.image.description="runner: a distributed task runner (broker, worker, client)"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=wheels /wheels /tmp/wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /tmp/wheels runner \
 && rm -rf /tmp/wheels \
 && runner --help >/dev/null \
 && groupadd --gid 10001 runner \
 && useradd --uid 10001 --gid runner --no-log-init --create-home --shell /bin/sh runner \
 && mkdir -p /data /keys \
 && chown runner:runner /data /keys \
 && chmod 700 /keys
# The example tasks (`--import tasks`): examples/tasks.py.
COPY examples /app/examples
ENV PYTHONPATH=/app/examples \
    RUNNER_IMPORTS=tasks \
    RUNNER_BIND=tcp://0.0.0.0:5555 \
    RUNNER_JOURNAL=/data/journal.db
USER runner
WORKDIR /home/runner
EXPOSE 5555
ENTRYPOINT ["runner"]
CMD ["--help"]
