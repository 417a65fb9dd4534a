"""Example agents (not installed with the package; the Docker image copies this folder)."""
