"""The bottom layer: user-facing errors and atomic file writers, imported by every other layer.

It imports nothing of the project (and nothing heavier than the standard library).
"""
