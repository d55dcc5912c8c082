#!/bin/sh
# The Secrets and the ConfigMap that deploy/k8s/nats-values.yaml and cadre.yaml mount, from the directory
# `cadre auth init AUTH_DIR` wrote: deploy/k8s/secrets.sh AUTH_DIR [POLICY_FILE]   (kubectl's current
# namespace; again after `cadre auth init` mints anew: each command replaces its object).
#   nats-auth               auth.conf (public JWTs) for the NATS servers
#   cadre-creds-<kind>      <kind>.creds and keyring.json: each actor kind gets only its own credentials
#   cadre-bootstrap         admin.creds and mirror.creds, for the bootstrap Job only
#   cadre-policy            policy.toml (ConfigMap; default deploy/policy.toml)
set -eu
auth=${1:?usage: secrets.sh AUTH_DIR [POLICY_FILE]}
policy=${2:-$(dirname "$0")/../policy.toml}
apply() { kubectl apply -f -; }
kubectl create secret generic nats-auth --from-file=auth.conf="$auth/auth.conf" --dry-run=client -o yaml | apply
for kind in planner validator decomposer agent budget approvals; do
  kubectl create secret generic "cadre-creds-$kind" \
    --from-file="$kind.creds=$auth/$kind.creds" --from-file=keyring.json="$auth/keyring.json" \
    --dry-run=client -o yaml | apply
done
kubectl create secret generic cadre-bootstrap \
  --from-file=admin.creds="$auth/admin.creds" --from-file=mirror.creds="$auth/mirror.creds" \
  --dry-run=client -o yaml | apply
kubectl create configmap cadre-policy --from-file=policy.toml="$policy" --dry-run=client -o yaml | apply
