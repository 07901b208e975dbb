"""The ``--serve`` line protocol shared by the training benchmarks (tools/bench_train.py,
tools/bench_monodepth2.py), driven by tools/bench_compare.py.

The benchmark prints ``{"ready": true, "first_step_s": s}`` once its first (compiling) step is done;
then each stdin line ``steps N`` runs N timed steps and answers ``{"step_s": [...], "loss": x}``;
``quit`` (or the end of stdin) returns, after which the benchmark prints its final JSON summary.
Stdout carries only these JSON lines, so progress messages go to stderr. Dependency-free: the
PyTorch anchor imports it without TensorFlow.
"""
from __future__ import annotations

import json
import sys
from typing import Callable, List, TextIO, Tuple


def serve(run_step: Callable[[], Tuple[float, float]], step_times: List[float], first_step_s: float,
          commands: TextIO = None, replies: TextIO = None) -> float:
    """Answers the protocol until ``quit``.

    Args:
      run_step: runs one training step, returns (seconds, loss).
      step_times: every timed step's seconds are appended here.
      first_step_s: the first step's seconds, reported in the ready line.
      commands, replies: the streams (default stdin / stdout).
    Returns:
      the last step's loss (NaN when no step ran).
    """
    commands = sys.stdin if commands is None else commands
    replies = sys.stdout if replies is None else replies
    print(json.dumps({"ready": True, "first_step_s": round(first_step_s, 3)}), file=replies,
          flush=True)
    loss = float("nan")
    for line in commands:
        command = line.split()
        if command[:1] == ["steps"]:
            times = []
            for _ in range(int(command[1])):
                seconds, loss = run_step()
                times.append(seconds)
            step_times += times
            print(json.dumps({"step_s": times, "loss": loss}), file=replies, flush=True)
        elif command[:1] == ["quit"]:
            break
    return loss
