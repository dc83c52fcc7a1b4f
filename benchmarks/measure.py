"""Run a command; print its wall time, CPU seconds and peak RSS as JSON on stdout.

A small process of its own, so the peak RSS measured is the command's: a child forked
straight from the (large) harness would report the harness's memory as its own peak.

    python benchmarks/measure.py -- COMMAND [ARGS...]
"""
import json
import os
import subprocess
import sys
import tempfile
import time

command = sys.argv[sys.argv.index("--") + 1 :]
started = time.perf_counter()
# stderr goes to a file so that reading stdout to its end cannot block on a full pipe;
# the process is reaped by wait4 below, for its resource usage.
with tempfile.TemporaryFile() as errors:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    errors.seek(0)
    stderr = errors.read()
print(json.dumps({
    "wall": time.perf_counter() - started,
    "cpu": usage.ru_utime + usage.ru_stime,
    "rss_mb": usage.ru_maxrss / 1024,
    "returncode": os.waitstatus_to_exitcode(status),
    "stderr_tail": stderr.decode(errors="replace")[-2000:],
    "stdout_tail": stdout.decode(errors="replace")[-20000:],
}))
