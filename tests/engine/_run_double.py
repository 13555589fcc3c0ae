"""Subprocess entry for engine tests: train the test double (conftest.py) in a fresh process.

usage: python _run_double.py OUT_DIR JSON_SECTIONS [--resume] [--no-val] [--save-final PATH]
Under ``torchrun`` every process runs it; rank 0 writes ``--save-final``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("engine_conftest", Path(__file__).with_name("conftest.py"))
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)


def main() -> None:
    out, sections = sys.argv[1], json.loads(sys.argv[2])
    resume = out if "--resume" in sys.argv else None
    cfg = conf.double_config(out, **sections)
    trainer = conf.make_trainer(cfg, resume=resume, val="--no-val" not in sys.argv)
    trainer.fit()
    if "--save-final" in sys.argv and trainer.acc.is_main_process:
        torch.save(trainer.unwrapped.state_dict(), sys.argv[sys.argv.index("--save-final") + 1])
    from detrkit.engine.run import end_distributed

    end_distributed()  # as `detrkit train` does: no live process group at exit


if __name__ == "__main__":
    main()
