"""Fault tests: syncd under broken replication, stalled readers and hostile clients."""
