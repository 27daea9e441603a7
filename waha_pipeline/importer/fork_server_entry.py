"""The chunk workers' fork server's entry: imported last of its preloads (process_tuning.FORK_SERVER_PRELOAD), after
the chunk code, it applies the fork server's tuning (process_tuning.tune_fork_server)."""

from waha_pipeline.process_tuning import tune_fork_server

tune_fork_server()
