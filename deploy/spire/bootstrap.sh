#!/bin/sh
# Bootstraps the compose SPIRE agent and registers the demo workloads. Idempotent.
set -eu

SOCKET=${SPIRE_SERVER_SOCKET:-/run/spire/server/private/api.sock}
TD=${TRUST_DOMAIN:-acme.test}
OUT=/run/spire/bootstrap
NODE="spiffe://$TD/node/compose"

server() { spire-server "$@" -socketPath "$SOCKET"; }

until server healthcheck >/dev/null 2>&1; do
  echo "waiting for spire-server"; sleep 1
done

server bundle show > "$OUT/bundle.pem.tmp" && mv "$OUT/bundle.pem.tmp" "$OUT/bundle.pem"

# A join token is single-use; the agent keeps its own SVID in its data volume after the
# first attestation, so a token is only made once.
if [ ! -s "$OUT/join_token" ]; then
  server token generate -spiffeID "$NODE" -ttl 3600 | sed -n 's/^Token: //p' > "$OUT/join_token"
fi
sed "s/@JOIN_TOKEN@/$(cat "$OUT/join_token")/" /etc/spire/agent.conf.template > "$OUT/agent.conf"

register() {
  id=$1; shift
  if server entry show -spiffeID "$id" | grep -q "Entry ID"; then
    echo "registered already: $id"
  else
    server entry create -parentID "$NODE" -spiffeID "$id" "$@"
  fi
}

# The decision service; the DNS name lets gRPC clients connect to pdp:8443.
register "spiffe://$TD/pdp" -selector docker:label:org.pdp.workload:pdp -dns pdp -x509SVIDTTL 3600
register "spiffe://$TD/gateway/edge" -selector docker:label:org.pdp.workload:gateway
register "spiffe://$TD/agent/support-bot" -selector docker:label:org.pdp.workload:support-bot
# Envoy in front of the sample MCP server; it gets its SVID over SDS from the agent.
register "spiffe://$TD/gateway/envoy" -selector docker:label:org.pdp.workload:mcp-gateway
echo "bootstrap done"
