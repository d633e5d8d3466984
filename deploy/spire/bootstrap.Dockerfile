# A shell plus the spire-server CLI: the SPIRE images are distroless.
FROM ghcr.io/spiffe/spire-server:1.13.3 AS spire

FROM debian:12.11-slim
COPY --from=spire /opt/spire/bin/spire-server /usr/local/bin/spire-server
COPY agent.conf.template /etc/spire/agent.conf.template
COPY bootstrap.sh /usr/local/bin/spire-bootstrap
ENTRYPOINT ["/usr/local/bin/spire-bootstrap"]
