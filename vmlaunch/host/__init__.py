"""What the tool does on its own machine: process trees that never outlive us, the stop
signals, private custom-data files, locked atomic file rewrites."""
