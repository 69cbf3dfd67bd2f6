"""Example backends that the contracts in ../contracts bind to."""
