# The one image every trustbus process in docker-compose.yml runs from:
# coordinator, ledger service, agents, and the one-shot provisioning.
# No keys in it: seeds reach the processes as Compose secrets (docs/DEPLOY.md).
FROM python:3.11-slim

# Run as the uid/gid that owns the seed files on the host (they are mode 0600
# and bind-mounted as they are): docker compose build passes TRUSTBUS_UID/GID.
# /var/lib/trustbus/ledger (the ledger's projection) is owned by that user, and
# so is a fresh named volume mounted there.
ARG UID=1000
ARG GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bus ./bus
COPY agents ./agents
COPY ledger ./ledger
COPY trustbus ./trustbus
RUN pip install . && rm -rf build

# The example agents (`trustbus agent run examples.pingpong:Player` imports
# from the working directory), the provisioning script and the health check.
COPY examples ./examples
COPY deploy/provision.sh deploy/healthcheck.py /usr/local/lib/trustbus/

RUN groupadd --gid "$GID" trustbus \
    && useradd --uid "$UID" --gid "$GID" --no-create-home --home-dir /var/lib/trustbus trustbus \
    && mkdir -p /var/lib/trustbus/ledger \
    && chown -R trustbus:trustbus /var/lib/trustbus
USER trustbus

ENTRYPOINT ["trustbus"]
CMD ["--help"]
