"""`make demo`: the embedded demo data set and the end-to-end run (``python -m utils.demo``)."""
