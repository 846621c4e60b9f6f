"""The web process: the Flask app Label Studio calls, the ML backend behind it (RegionScribeBackend), and the gunicorn
server. It never imports torch."""
