"""Named kill points for fault tests: `ACTSPARSE_KILL_AT=<point>` makes the job SIGKILL
itself when it reaches that point, which is how the fault suite reproduces a `kill -9` in
the middle of writing a job's outputs at a known moment. Unset (always, outside tests),
`kill_point()` is a dictionary lookup.

Points: `data.after_shards`, `train.after_checkpoint`, `calibrate.after_layer`,
`job.before_commit` (every stage: all files written, folder not yet renamed).
"""

from __future__ import annotations

import os
import signal


def kill_point(name: str) -> None:
    if os.environ.get("ACTSPARSE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
