"""Placement decisions (filter / score / bind) over a cluster view and a policy."""
