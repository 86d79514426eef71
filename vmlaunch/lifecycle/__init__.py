"""One VM's life: look, adopt or create, wait, verify, clean up, retry, give up."""
