"""deployments: see DESIGN.md (deployments -> flows -> tasks -> rlhf_core)."""
