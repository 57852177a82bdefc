"""Renderers: one Report in, terminal text / Markdown / JSON out. No gating logic here."""
