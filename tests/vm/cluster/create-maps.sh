#!/usr/bin/env bash
# The cluster scenario's maps (bin/deploy runs it): the node's own test cell, ThisCell
# and CellServDB as tests/vm/node/lib.sh's cell_config wrote them to /etc/openafs.
set -euo pipefail
: "${SPECIAL_RESOURCE_NAMESPACE:?source bin/setupEnvironment first}"
kubectl create configmap etc-openafs --namespace "$SPECIAL_RESOURCE_NAMESPACE" \
    --from-file=ThisCell=/etc/openafs/ThisCell --from-file=CellServDB=/etc/openafs/CellServDB \
    --dry-run=client -o yaml | kubectl apply --namespace "$SPECIAL_RESOURCE_NAMESPACE" -f -
