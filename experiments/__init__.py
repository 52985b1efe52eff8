"""The research studies (offset, off-centre, recipe, orientation): scripts that train and evaluate
many runs on synthetic worlds and write one results file each under ``experiments/results/``.
Speed and scale measurements live in ``benchmarks/``."""
