"""The page's elements by role, as their ``elem_id`` in the HTML: :mod:`utils.app.page` sets them, the browser
test and the screenshot (:mod:`utils.app.browser`) find them by them. Kept apart so that neither side needs the
other's imports (Gradio, Selenium)."""

IDS = {"upload": "upload", "precision": "precision", "tiling": "tiling", "restore": "restore", "stop": "stop",
       "status": "status", "comparison": "comparison", "download": "download", "residual": "residual", "wb": "wb-map",
       "wb_residual": "residual-embedding-map", "maps": "maps-caption"}
