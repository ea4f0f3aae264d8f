"""Pure logic: slice requests, inventory, ledger, CU masks, policy, solver. No HTTP, no Kubernetes."""
