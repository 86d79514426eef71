"""The NATS worker: takes requests from the work queue and runs each VM's lifecycle."""
