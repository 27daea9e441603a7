"""Application layer: runs the import stages of a chunk by combining WAHA access, pure domain logic and the CRM."""
