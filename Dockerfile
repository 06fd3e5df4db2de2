# FlickrHub: one image for every service; the Deployment picks one with `python -m <service>`
# (gateway, mover, worker, cache, edge).
#
#   docker build -t flickrhub:latest .
#   docker run --rm -p 50051:50051 flickrhub:latest python -m gateway
#
# Stage 1 (builder) generates the gRPC code from protos/ into gen/ with the code-generation
# tools in a throwaway venv, then installs the project with its *runtime* dependencies only
# (`pip install .`, pinned by constraints.txt) into /opt/venv. pyproject.toml finds packages in
# services/, libs/ and gen/, so the generated package `flickrhub.v1` is installed into that venv
# together with the services. Stage 2 copies only /opt/venv onto a clean python:3.11-slim and
# runs as an unprivileged user: no compiler, no grpcio-tools, no test or lint tools, no sources.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Code generation tools (dev dependencies) live in their own venv and never reach the runtime image.
COPY constraints.txt ./
RUN python -m venv /opt/codegen \
 && /opt/codegen/bin/pip install -c constraints.txt grpcio-tools mypy-protobuf googleapis-common-protos

# gen/ is excluded by .dockerignore: it is always regenerated here, so it can never be stale.
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/gen_protos.py
RUN /opt/codegen/bin/python scripts/gen_protos.py

# The project itself, runtime dependencies only (no `[dev]` extra).
COPY pyproject.toml README.md ./
COPY libs/ libs/
COPY services/ services/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt . \
 && /opt/venv/bin/python -c "import flickrhub.v1.jobs_pb2, flickrhub.v1.admin_pb2, flickrhub.v1.cache_pb2" \
 && /opt/venv/bin/python -m compileall -q /opt/venv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# BIND_HOST/EDGE_HOST: listen on every interface inside a container (Settings' defaults are
# loopback for local runs). The Kubernetes ConfigMap sets them as well.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    BIND_HOST=0.0.0.0 \
    EDGE_HOST=0.0.0.0

RUN groupadd --system --gid 10001 flickrhub \
 && useradd --system --uid 10001 --gid flickrhub --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin flickrhub

# The venv holds the services, libs/common and the generated flickrhub.v1 package.
COPY --from=builder /opt/venv /opt/venv

# Fail the build if a service has no `python -m` entry point (e.g. services/cache left empty).
RUN python -c "import importlib.util, sys; \
missing = [s for s in ('gateway', 'mover', 'worker', 'cache', 'edge') if importlib.util.find_spec(s + '.__main__') is None]; \
sys.exit(f'no __main__ for: {missing}') if missing else None"

WORKDIR /tmp
USER 10001:10001

# gRPC: gateway 50051, mover 50052 (health), cache 50053, worker 50054 (health); edge HTTP 8080;
# Prometheus as k8s/base sets them: 9101 gateway, 9102 mover, 9103 cache, 9104 worker, 9105 edge
# (each service's <SERVICE>_METRICS_PORT).
EXPOSE 50051 50052 50053 50054 8080 9101 9102 9103 9104 9105

# SIGTERM is what the services drain on; exec form keeps Python as PID 1 so it receives it.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway"]
