"""waha-pipeline: import WhatsApp history from WAHA into a CRM through Dagster.

Importing the package does no I/O and reads no environment.
"""

__version__ = "0.1.0"
