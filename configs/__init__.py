"""The model zoo's YAML configs, one file per family (shipped as package data)."""
