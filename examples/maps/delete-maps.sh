#!/usr/bin/env bash
# Deletes the maps create-maps.sh made in the SpecialResource's namespace:
# the ConfigMaps etc-yfs and usr-share-yfs and the Secret etc-yfs-keytabs.
#
# Run by the undeploy command (bin/undeploy) with SPECIAL_RESOURCE_NAMESPACE set, and
# SPECIAL_RESOURCE_FILE and SPECIAL_RESOURCE_NAME; KUBECONFIG and KUBE_CONTEXT,
# when set, choose the cluster. Maps already gone are not an error.
set -euo pipefail

: "${SPECIAL_RESOURCE_NAMESPACE:?must be set to the SpecialResource namespace (source bin/setupEnvironment first)}"
namespace=$SPECIAL_RESOURCE_NAMESPACE

kubectl=(kubectl)
if [[ -n "${KUBE_CONTEXT:-}" ]]; then
    kubectl+=(--context "$KUBE_CONTEXT")
fi

echo "delete-maps: maps of SpecialResource ${SPECIAL_RESOURCE_NAME:-?} in namespace $namespace" >&2

"${kubectl[@]}" delete configmap etc-yfs usr-share-yfs --namespace "$namespace" --ignore-not-found
"${kubectl[@]}" delete secret etc-yfs-keytabs --namespace "$namespace" --ignore-not-found
