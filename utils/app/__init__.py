"""A local web app over the tester: drop an image, get it restored (``make app``, ``python -m utils.app``).

- :mod:`utils.app.restore`: pure functions, no web framework: one upload restored exactly as
  ``tester_bary.py --input`` restores it, and the maps the page shows (residual, WB and residual embeddings);
- :mod:`utils.app.stop_checks`: where a restoration at work looks whether to stop (Stop, a closed tab, Ctrl-C):
  before each PyTorch operation on the CPU, each layer on a GPU;
- :mod:`utils.app.page`: the Gradio page built on them (its elements' ids in :mod:`utils.app.elements`);
- :mod:`utils.app.main`: the command line (``--model``, ``--port``, ...), which loads the model and serves the
  page on 127.0.0.1 only, with Gradio's analytics and version checks off;
- :mod:`utils.app.browser`: headless Chromium driving the page (the browser test and the screenshot use it);
- :mod:`utils.app.screenshot`: ``figs/app.png``, the page after a restore.

Gradio and Selenium are optional (``requirements-app.txt``); nothing else in the project imports this package.
"""
