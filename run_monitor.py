#!/usr/bin/env python3
"""Run the mood monitor: ``python run_monitor.py --help`` explains every option."""

import sys

from monitor.cli import main

if __name__ == "__main__":
    sys.exit(main())
