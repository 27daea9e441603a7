"""The `waha-pipeline` command line."""
