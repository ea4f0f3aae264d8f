"""`gpuslice rightsize` and `gpuslice profile sweep --apply`: the face that reads Prometheus and changes workloads."""
