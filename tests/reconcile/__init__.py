"""The fast layer: reconcile and finalize against in-memory fakes, with a crash at every await."""
