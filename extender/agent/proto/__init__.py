"""Generated gRPC bindings of the kubelet device plugin API v1beta1 (see api.proto for the command)."""
