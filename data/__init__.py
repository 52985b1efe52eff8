"""Datasets (CVUSA, VIGOR, synthetic), image decoding, paired augmentation, samplers."""
