"""Serving explanations over HTTP: ``xcam serve`` (:func:`make_app` under uvicorn).

``app`` holds the routes and limits, ``batcher`` the dynamic batching, ``answer`` one
image's upload and answer. An in-graph file is served without torch.
"""

from xcam.serve.app import make_app
from xcam.serve.batcher import Batcher

__all__ = ["Batcher", "make_app"]
