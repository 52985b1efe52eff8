"""Localise new panoramas: tile sources, a FAISS index of satellite descriptors, queries, maps.

Layering: above :mod:`helper` (it uses the checkpoint loader, the descriptor extraction and the
metrics); only the ``localize.py`` entry script imports it.
"""
