"""The feedback loop: webhook events into the store, the image cache, reconciliation with Label Studio, the
retraining policy, the training run and its promotion gate."""
