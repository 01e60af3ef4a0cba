"""`python fsdp_probe.py SPEC.json` under accelerate launch: the stage entry point, plus a callback that records
on each rank how accelerate prepared the model (distributed type, FSDP version, DTensor-sharded parameters)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from tasks.training import entry
from tasks.training import run as training


class _Probe(TrainerCallback):
    def __init__(self, trainer, folder: Path) -> None:
        self.trainer, self.folder = trainer, folder

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        accelerator = self.trainer.accelerator
        plugin = accelerator.state.fsdp_plugin
        params = list(self.trainer.model.parameters())
        record = {
            "distributed_type": str(accelerator.distributed_type),
            "fsdp_version": getattr(plugin, "fsdp_version", None),
            "dtensor_params": sum(isinstance(p, DTensor) for p in params),
            "params": len(params),
        }
        (self.folder / f"probe-rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))


def _probed(build):
    def build_and_probe(spec, args):
        trainer = build(spec, args)
        trainer.add_callback(_Probe(trainer, Path(spec.stage_dir)))
        return trainer

    return build_and_probe


if __name__ == "__main__":
    training.build_trainer = _probed(training.build_trainer)
    sys.exit(entry.main())
