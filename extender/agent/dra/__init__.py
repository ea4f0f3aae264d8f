"""Dynamic Resource Allocation: ResourceSlices, the kubelet DRA plugin, exact CU sets per claim share."""
