"""Profiles (``profiles/*.yaml``): smoke, default (synthetic) and paper (real data)."""
