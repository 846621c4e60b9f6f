"""Predictions: the web side submits describe jobs and waits for them (submit); the worker side runs them (job),
answering them (answers) with the describer it loaded once (state)."""
