"""The commands besides deploy and serve: launch (one VM), status, reset, events."""
