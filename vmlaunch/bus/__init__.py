"""NATS: the connection and its credentials, streams, publishing, the orchestrator's event
feed, the embedded server."""
