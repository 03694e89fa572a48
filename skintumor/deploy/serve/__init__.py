"""``skintumor serve BUNDLE``: a local web page (and JSON API) that applies a model bundle to scans.

    skintumor serve model/                       # http://127.0.0.1:8000/, this machine only
    skintumor serve model/ --host 0.0.0.0 --token "$(openssl rand -hex 16)"

The page (``static/``: plain HTML, CSS and JavaScript, no build step, nothing from the internet)
and the API (``POST /api/predict``, ``GET /api/model``, ``GET /healthz``) are one FastAPI app
(:func:`create_app`). Predictions go through :class:`skintumor.deploy.predict.Predictor`, the one
inference path ``skintumor predict`` uses; overlays through :func:`skintumor.explain.overlay.overlay_image`.
"""

from skintumor.deploy.serve.app import create_app

__all__ = ["create_app"]
