"""`ScaleOutSettings`: where a training stage runs - in the pipeline's process, under `accelerate launch`, or as a
Ray Train job on a Ray cluster. Existing engines only: accelerate (DDP / FSDP / DeepSpeed, one or more machines)
and Ray Train's `TorchTrainer`; this module only declares and checks their settings."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.stage_registry import STAGES, stage_names

__all__ = ["ACCELERATE_FIELDS", "RAY_FIELDS", "ScaleOutSettings"]


ACCELERATE_FIELDS = (
    "num_processes",
    "accelerate_config",
    "num_machines",
    "machine_rank",
    "main_process_ip",
    "main_process_port",
)
RAY_FIELDS = ("address", "num_workers", "resources_per_worker", "use_gpu", "storage_path", "max_failures")
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")


class ScaleOutSettings(BaseModel):
    """Run training stages here (``local``), through ``accelerate launch`` or as a Ray Train job (``ray``)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "accelerate", "ray"] = Field(
        "local",
        description="local: in the pipeline's process; accelerate: accelerate launch (N processes, one or more "
        "machines); ray: a Ray Train TorchTrainer job on the Ray cluster at `address`. When omitted, "
        "num_processes > 1 or an accelerate_config means accelerate.",
    )
    stages: list[str] = Field(
        default_factory=lambda: list(stage_names()),
        description="Stages run by the backend (others run locally).",
    )
    # ---- accelerate ------------------------------------------------------------------------------------------
    num_processes: int = Field(1, ge=1, description="accelerate: processes in all, over every machine.")
    accelerate_config: str | None = Field(
        None, description="accelerate: a config file (accelerate launch --config_file), e.g. for FSDP."
    )
    num_machines: int = Field(1, ge=1, description="accelerate: machines (one launcher per machine).")
    machine_rank: int = Field(0, ge=0, description="accelerate: this machine's rank (0 runs the pipeline).")
    main_process_ip: str | None = Field(None, description="accelerate: address of machine 0 (multi-node).")
    main_process_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="accelerate: rendezvous port on machine 0 (default: a free port on one "
        "machine, 29500 on several).",
    )
    # ---- ray -------------------------------------------------------------------------------------------------
    address: str | None = Field(
        None, description="ray: the cluster (host:port, ray://host:10001 or auto); default $RAY_ADDRESS."
    )
    num_workers: int = Field(2, ge=1, description="ray: training workers (one torch.distributed rank each).")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="ray: resources of each worker, e.g. {CPU: 4, GPU: 1}.",
    )
    use_gpu: bool = Field(False, description="ray: one GPU per worker and NCCL (gloo on CPUs).")
    storage_path: str | None = Field(
        None,
        description="ray: where Ray Train persists checkpoints, a folder every node sees or an fsspec URI "
        "(default: <stage folder>/ray, fine on one machine).",
    )
    max_failures: int = Field(
        0,
        ge=-1,
        description="ray: worker-group restarts from the last checkpoint before failing (-1: no limit).",
    )

    @model_validator(mode="before")
    @classmethod
    def _infer_backend(cls, data: Any) -> Any:
        # Configs written before `backend` existed said `num_processes: 2` (or gave an accelerate config).
        if isinstance(data, dict) and "backend" not in data:
            processes = data.get("num_processes", 1)
            if (isinstance(processes, int) and processes > 1) or data.get("accelerate_config"):
                return {**data, "backend": "accelerate"}
        return data

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r} (expected one of {', '.join(STAGES)})")
        return value

    @field_validator("accelerate_config")
    @classmethod
    def _config_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"accelerate config file not found: {value!r}")
        return str(path.resolve())

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.match(value):
            raise ValueError(f"{value!r} is not a Ray address (host:port, ray://host:port or auto)")
        return value

    @field_validator("resources_per_worker")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = sorted(k for k, v in value.items() if v < 0)
        if negative:
            raise ValueError(f"negative amounts for {negative}")
        return value

    @model_validator(mode="after")
    def _fits_backend(self) -> ScaleOutSettings:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def problems(self) -> list[str]:
        """Settings that contradict each other, each naming its keys."""
        problems = []
        given = self.model_fields_set
        foreign = {
            "local": (*ACCELERATE_FIELDS, *RAY_FIELDS),
            "accelerate": RAY_FIELDS,
            "ray": ACCELERATE_FIELDS,
        }
        for name in foreign[self.backend]:
            if name in given and getattr(self, name) != type(self).model_fields[name].get_default(
                call_default_factory=True
            ):
                problems.append(f"{name} is a setting of another backend, but backend is {self.backend!r}")
        if self.backend == "accelerate":
            problems += self._accelerate_problems()
        if self.backend == "ray" and importlib.util.find_spec("ray") is None:
            problems.append(
                "backend is 'ray' but Ray is not installed: install it with `pip install -e .[ray]`"
            )
        if self.backend == "ray" and self.use_gpu and self.resources_per_worker.get("GPU", 1) == 0:
            problems.append("use_gpu is true but resources_per_worker gives GPU: 0")
        return problems

    def _accelerate_problems(self) -> list[str]:
        problems = []
        if self.machine_rank >= self.num_machines:
            problems.append(
                f"machine_rank {self.machine_rank} must be below num_machines {self.num_machines}"
            )
        if self.num_machines > 1:
            if self.main_process_ip is None:
                problems.append("num_machines > 1 needs main_process_ip (the address of machine 0)")
            if self.num_processes % self.num_machines:
                problems.append(
                    f"num_processes {self.num_processes} (all machines together) is not a multiple of "
                    f"num_machines {self.num_machines}"
                )
        return problems

    # ---- derived facts ---------------------------------------------------------------------------------------
    def launches(self, stage: str) -> bool:
        """True when ``stage`` runs outside the pipeline's process."""
        return self.backend != "local" and stage in self.stages

    def world_size(self, stage: str) -> int:
        """Training processes of ``stage`` (the global batch is per_device_train_batch_size x this)."""
        if not self.launches(stage):
            return 1
        return self.num_workers if self.backend == "ray" else self.num_processes
