#!/usr/bin/env bash
# End-to-end on kind (needs docker, kind, kubectl): build the image, deploy the gpuslice scheduler,
# give the workers fake MI300X inventory, schedule GPU pods of both classes through it, and check
# every pod got an assignment and no two guarantees overlap. KEEP=1 keeps the cluster afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-gpuslice}
IMAGE=ghcr.io/gpuslice/gpuslice:0.1.0
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 2; }
done

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config deploy/kind-config.yaml
trap '[ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"' EXIT
# Version skew: kube-scheduler may not be newer than the API server (deploy/kind-config.yaml pins
# kind nodes of the scheduler's minor version; an existing cluster of another version is refused).
want=$(sed -n 's#.*kube-scheduler:v\(1\.[0-9]*\).*#\1#p' deploy/scheduler-deployment.yaml)
have=$(kubectl version -o json | python3 -c 'import json,sys; v=json.load(sys.stdin)["serverVersion"]; print(v["major"] + "." + v["minor"].rstrip("+"))')
[ "$have" = "$want" ] || { echo "e2e-kind: cluster is v$have, the scheduler v$want: recreate it (kind delete cluster --name $CLUSTER)" >&2; exit 2; }
make image IMAGE="$IMAGE"
kind load docker-image "$IMAGE" --name "$CLUSTER"
kubectl apply -k deploy/
kubectl -n kube-system rollout status deploy/gpuslice-scheduler --timeout=180s

# Fake GPUs: the inventory annotation the node agent would publish, and the extended resource
# the agent's device plugin would advertise (so kubelet admits the pods).
for node in $(kubectl get nodes -l gpuslice.io/e2e-gpu=true -o name); do
  name=${node#node/}
  inv=$(python3 -c "import json,sys; print(json.dumps([{'index':i,'id':f'{sys.argv[1]}-{i}','model':'MI300X',
'computeUnits':304,'xcds':8,'shaderEngines':32,'memoryBytes':206158430208,'healthy':True} for i in range(2)]))" "$name")
  kubectl annotate --overwrite "$node" "gpuslice.io/inventory=$inv"
  kubectl patch "$node" --subresource=status --type=merge \
    -p '{"status":{"capacity":{"gpuslice.io/gpu-share":"16"}}}'
done

for i in 1 2 3 4 5 6; do
  class=$([ $((i % 2)) = 0 ] && echo compute-bound || echo memory-bound)
  kubectl apply -f - <<POD
apiVersion: v1
kind: Pod
metadata:
  name: e2e-gpu-$i
  annotations: {gpuslice.io/compute: "250m", gpuslice.io/memory: "16Gi", gpuslice.io/class: "$class"}
spec:
  schedulerName: gpuslice
  containers:
    - name: main
      image: registry.k8s.io/pause:3.10
      resources:
        limits: {gpuslice.io/gpu-share: "1"}
POD
done
kubectl wait --for=condition=PodScheduled --timeout=120s $(for i in 1 2 3 4 5 6; do echo pod/e2e-gpu-$i; done)

kubectl get pods -o json | python3 -c '
import json, sys
pods = [p for p in json.load(sys.stdin)["items"] if p["metadata"]["name"].startswith("e2e-gpu-")]
seen = {}
for p in pods:
    a = json.loads(p["metadata"]["annotations"]["gpuslice.io/assignment"])
    assert a["node"] == p["spec"]["nodeName"], p["metadata"]["name"]
    for g in a["gpus"]:
        cus = set()
        for part in g["cus"].split(","):
            lo, _, hi = part.partition("-")
            cus |= set(range(int(lo), int(hi or lo) + 1))
        key = (a["node"], g["index"])
        assert not (seen.get(key, set()) & cus), f"overlap on {key}"
        seen[key] = seen.get(key, set()) | cus
print(f"e2e-kind: {len(pods)} GPU pods placed, no overlapping guarantees")
'
