"""Consumer services: effectively-once job state from the raw topic (see DESIGN.md)."""
