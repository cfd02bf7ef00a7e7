"""Imports the built-in downstream tasks so that they register themselves."""
