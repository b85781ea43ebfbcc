"""The scoring core: what every door (the HTTP service, batch scoring, training) shares.

No FastAPI and no Dask in here. ``features`` (the feature schema), ``model_ref`` (MLflow model
URIs), ``loading`` (load a model and its signature), ``predictors`` (the ``Predictor`` protocol:
LightGBM, compiled trees, pyfunc), ``compiled`` (lleaves, checked against LightGBM), ``contract``
(the request contract: pydantic models and the decoders that honour them), ``errors`` (the error
tree) and ``tracking`` (where the MLflow store is).
"""
