"""Persistence: models, engine, queries."""
