"""Real servers the tests start as subprocesses (not doubles): Synapse."""
