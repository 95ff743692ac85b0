"""CVAT adapter: auto-annotation and tracking functions (cvat-sdk), and the Nuclio handler's core.

``backend.cvat.func`` is a detection function module for ``cvat-cli task auto-annotate``;
``backend.cvat.tracker`` a tracking function for ``cvat-cli function create-native`` / ``run-agent``;
``backend.cvat.nuclio`` answers CVAT's serverless detector requests (``serverless/dcsam/nuclio/main.py``).
"""
