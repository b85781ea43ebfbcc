"""The batch door: score tables on Dask with the core's checks and predictors.

``python -m batch``; see ``batch.job``.
"""
