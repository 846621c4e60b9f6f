"""Predictions: the web side submits describe jobs and waits for them; the worker side answers them with the
describer it loaded once."""
