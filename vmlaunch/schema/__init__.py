"""The message schema and the VM spec: typed fields, safe JSON, value checks, the
vocabulary every layer shares."""
