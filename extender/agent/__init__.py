"""The node agent: GPU inventory from KFD sysfs, the kubelet device plugin, VRAM accounting."""
