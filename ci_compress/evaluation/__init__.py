"""Measurements: task metrics, agreement, size, latency, memory."""
