"""Run a command; print its wall time, CPU seconds and peak RSS as JSON on stdout.

A small process of its own, so the peak RSS measured is the command's: a child forked
straight from the (large) harness would report the harness's memory as its own peak.

    python benchmarks/measure.py -- COMMAND [ARGS...]
"""
import json
import os
import subprocess
import sys
import time

command = sys.argv[sys.argv.index("--") + 1 :]
started = time.perf_counter()
process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
stderr = process.stderr.read()
_, status, usage = os.wait4(process.pid, 0)
print(json.dumps({
    "wall": time.perf_counter() - started,
    "cpu": usage.ru_utime + usage.ru_stime,
    "rss_mb": usage.ru_maxrss / 1024,
    "returncode": os.waitstatus_to_exitcode(status),
    "stderr_tail": stderr.decode(errors="replace")[-2000:],
}))
