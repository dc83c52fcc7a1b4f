"""trackport runs: see the group's modules."""
