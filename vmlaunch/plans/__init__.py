"""Deployment plans and their sources: a plan file, --vm options, the bash scripts' config."""
