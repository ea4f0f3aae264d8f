"""gpuslice: fractions of AMD Instinct GPUs for Kubernetes workloads."""

__version__ = "0.1.0"
