"""Transports (HTTP via BentoML), schemas, errors, settings and the Engine that wires them."""
