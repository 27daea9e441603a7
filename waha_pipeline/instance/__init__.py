"""The Dagster instance as the definitions and the CLI share it: the runs of a channel (tags, partition ranges,
which are in progress) and the SQLite event log storage. Not Dagster definitions (those are in `defs/`); launching
runs in process is the CLI's (`cli/launch.py`)."""
