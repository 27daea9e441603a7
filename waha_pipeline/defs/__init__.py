"""Dagster definitions: thin wiring of WAHA access, domain logic and CRM storage into assets, jobs and sensors."""
