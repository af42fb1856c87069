"""Test harnesses shared by raylm's test suites (multi-node clusters from network namespaces)."""
