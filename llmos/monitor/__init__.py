"""Observability: the metrics registry, health and readiness, and the live `top` view."""
