"""The deployment runner: NATS mode, polling mode, and where their events go."""
