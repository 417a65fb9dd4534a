# An agent image: the agentcore-nats wheel (compiled core) and the example worker, run as a non-root user.
#   docker build -t agentcore-worker .        docker run -e NATS_URL=nats://host:4222 agentcore-worker
# Another agent module: copy it into /app and pass its module:attr, e.g. `docker run ... agentcore-worker mypkg.agent:build`.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY _ext ./_ext
COPY agentcore ./agentcore
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/agentcore_nats-*.whl uvloop && rm -rf /wheels \
    && useradd --create-home --uid 10001 agent
WORKDIR /app
COPY examples ./examples
USER agent
ENV PYTHONUNBUFFERED=1 NATS_URL=nats://nats:4222
# `agentcore run` stops the agent cleanly on SIGTERM (docker stop) as on Ctrl-C.
ENTRYPOINT ["agentcore", "run"]
CMD ["examples.worker:build"]
