"""The deployment state: the reducer, the state and events files and their writer."""
