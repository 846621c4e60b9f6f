"""The ground every other backend package stands on: settings, logging, Redis keys and connections, liveness,
the model registry and the Prometheus counters. Imports nothing else of the backend."""
