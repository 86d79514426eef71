"""The Azure CLI simulator behind scripts/az-sim (azure-cli 2.91.0 from outside).

See docs/az-simulator.md for what it models and which module holds what.
"""
