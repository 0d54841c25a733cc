#!/usr/bin/env bash
# Creates, or updates, the maps that the example SpecialResources mount into the
# driver container (spec.kmod.mapVolumes), in the SpecialResource's namespace:
#
#   ConfigMap etc-yfs           key yfs-client.conf  <- yfs-client.conf
#   ConfigMap usr-share-yfs     key cellservdb.conf  <- cellservdb.conf
#   Secret    etc-yfs-keytabs   key client.keytab    <- client.keytab.b64, decoded
#
# The files beside this script hold PLACEHOLDER values: replace them with your
# cell's before deploying. client.keytab.b64 is the base64 of the keytab:
#   base64 -w0 /path/to/client.keytab > examples/maps/client.keytab.b64
#
# Run by the deploy command (bin/deploy) with SPECIAL_RESOURCE_NAMESPACE set, and
# SPECIAL_RESOURCE_FILE and SPECIAL_RESOURCE_NAME; KUBECONFIG and KUBE_CONTEXT,
# when set, choose the cluster. Running it again is harmless: every object is
# rendered by kubectl on this machine and applied.
set -euo pipefail

: "${SPECIAL_RESOURCE_NAMESPACE:?must be set to the SpecialResource namespace (source bin/setupEnvironment first)}"
namespace=$SPECIAL_RESOURCE_NAMESPACE
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

kubectl=(kubectl)
if [[ -n "${KUBE_CONTEXT:-}" ]]; then
    kubectl+=(--context "$KUBE_CONTEXT")
fi

# Reads one rendered object on stdin and applies it.
apply() {
    "${kubectl[@]}" apply --namespace "$namespace" -f -
}

# The keytab is binary: decode it into a private temporary directory.
workdir=$(mktemp -d)
trap 'rm -rf -- "$workdir"' EXIT
base64 -d "$here/client.keytab.b64" >"$workdir/client.keytab"
if grep -q 'PLACEHOLDER' "$workdir/client.keytab"; then
    echo "create-maps: warning: $here/client.keytab.b64 is still the placeholder, not a keytab" >&2
fi

echo "create-maps: maps of SpecialResource ${SPECIAL_RESOURCE_NAME:-?} in namespace $namespace" >&2

"${kubectl[@]}" create configmap etc-yfs --namespace "$namespace" \
    --from-file=yfs-client.conf="$here/yfs-client.conf" \
    --dry-run=client -o yaml | apply

"${kubectl[@]}" create configmap usr-share-yfs --namespace "$namespace" \
    --from-file=cellservdb.conf="$here/cellservdb.conf" \
    --dry-run=client -o yaml | apply

"${kubectl[@]}" create secret generic etc-yfs-keytabs --namespace "$namespace" \
    --from-file=client.keytab="$workdir/client.keytab" \
    --dry-run=client -o yaml | apply
