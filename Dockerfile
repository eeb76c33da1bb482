# The hoofhearted exporter. docker-compose.yml runs it with the host's /proc, /sys and / mounted
# read-only under /host and with pid: host, so it sees every process on the machine.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# FreeIPMI's ipmi-sensors reads the server's BMC (in-band through /dev/ipmi0, or over the LAN).
RUN apt-get update && apt-get install -y --no-install-recommends freeipmi-tools \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install . && rm -rf /src

WORKDIR /
EXPOSE 10101
# Root inside the container, with capabilities cut down in docker-compose.yml: reading other
# users' /proc/<pid>/io and fdinfo needs it. Mounts are read-only.
ENTRYPOINT ["hoofhearted"]
CMD ["--web.listen-address=0.0.0.0:10101", "--path.procfs=/host/proc", "--path.sysfs=/host/sys", "--path.rootfs=/host/root"]
