#!/usr/bin/env python3
"""vm_launcher: create Azure VMs from NATS requests (`serve`) or one by hand (`launch`).

The commands live in `vmlaunch.cli.launcher`; `pip install .` installs them as `vm-launcher`.
Exit codes: 0 ready (or a worker stopped gracefully), 1 failed, 2 bad input, 3 could not run.
"""

from vmlaunch.cli.launcher import main

if __name__ == "__main__":
    main()
