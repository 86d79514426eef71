"""The Azure side: az argv builders, the one failure table, authoritative reads, the SSH
and cloud-init checks."""
