#!/usr/bin/env bash
# Deletes what create-maps.sh made (bin/undeploy runs it).
set -euo pipefail
: "${SPECIAL_RESOURCE_NAMESPACE:?source bin/setupEnvironment first}"
kubectl delete configmap etc-openafs --namespace "$SPECIAL_RESOURCE_NAMESPACE" --ignore-not-found
