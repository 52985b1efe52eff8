"""Procedural synthetic world behind ``data.synthetic``: scene generation (``scene``),
rasterisation (``raster``), aerial / panorama rendering (``render``), deterministic
noise (``noise``) and the CVUSA / VIGOR writers (``layouts``)."""
