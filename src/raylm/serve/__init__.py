"""Serving on Ray: the controller, the replica supervisors, and the vLLM launcher."""
