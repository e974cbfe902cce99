#!/bin/bash
# Session BF's last device call (2026-12-05, 22:29-22:31 UTC, on the warm H100 of call BF6): callBF4.sh's first step
# only (off), with its host-memory watch (memwatch.sh).
ONLY_OFF=1 bash docs/runs/fortyfifth/callBF4.sh
