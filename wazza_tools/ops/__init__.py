"""Working on a running system: jobs, replay, dead letters, schema migrations."""
