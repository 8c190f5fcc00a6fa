#!/usr/bin/env python3
"""Performance tester for the xiaozhi voice server.

    python performance_tester.py --help

Measures each provider on its own (VAD, ASR, LLM, TTS), the end-to-end latency a device
experiences (simulated firmware devices against the real server), and the capacity of this
machine under load; prints tables and writes a JSON report and a PNG chart. See
docs/performance.md. The logic lives in bench/.
"""

from __future__ import annotations

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
