#!/usr/bin/env python3
"""orchestrator: launch a plan of Azure VMs through NATS workers and keep the state file true.

The commands live in `vmlaunch.cli.orchestrator`; `pip install .` installs them as
`vm-orchestrator`. Exit codes: 0 all VMs ready, 1 some VM failed, 2 bad input, 3 could not
run, 130 interrupted (run again to resume).
"""

from vmlaunch.cli.orchestrator import main

if __name__ == "__main__":
    main()
