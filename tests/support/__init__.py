"""Helpers the tests share: real hub processes and clients, databases, in-process nodes,
the browser. Tests import helpers from here only, never from another test module."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
