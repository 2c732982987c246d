"""Test helpers importable by worker processes (the tests folder is on their sys.path)."""
