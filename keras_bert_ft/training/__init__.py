"""Training: the runner that knows no task, with its strategy, precision, optimizer, callbacks and run folder."""
