"""Playing Wazza: signed webhooks sent as Wazza sends them, and the store checked after."""
