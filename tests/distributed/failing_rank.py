"""The aitimestepper command with one rank made to fail, for tests/test_distributed.py.

    torchrun ... tests/distributed/failing_rank.py RANK AFTER COMMAND [FLAGS...]

Rank RANK raises a plain RuntimeError on its (AFTER + 1)-th Part 1 attempt: an unexpected
error inside one process, as an out-of-memory would be, while the other ranks carry on into
their next collective.
"""
import os
import sys

from aitimestepper import cli
from aitimestepper.training import part1

failing_rank, after = int(sys.argv[1]), int(sys.argv[2])
if int(os.environ["RANK"]) == failing_rank:
    judge = part1.judge
    calls = [0]

    def failing_judge(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise RuntimeError(f"injected failure on rank {failing_rank}")
        return judge(*args, **kwargs)

    part1.judge = failing_judge

sys.exit(cli.main(sys.argv[3:]))
