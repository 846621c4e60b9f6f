"""The web process: the Flask app Label Studio calls, the ML-backend model behind it, and the gunicorn server.
It never imports torch."""
