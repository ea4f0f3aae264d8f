"""Generated gRPC bindings of the kubelet DRA plugin API v1 and plugin registration API v1 (see the .proto files)."""
