"""DESIGN.md: importing all of rlhf_core loads neither prefect nor mlflow."""

import subprocess
import sys
import textwrap


def test_rlhf_core_imports_neither_prefect_nor_mlflow():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import rlhf_core
        for name in rlhf_core.__all__:
            getattr(rlhf_core, name)
        for mod in pkgutil.walk_packages(rlhf_core.__path__, "rlhf_core."):
            if "triton" in mod.name:
                continue  # imports triton lazily and only on CUDA; still must not import prefect/mlflow
            importlib.import_module(mod.name)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "mlflow"))
        print(bad)
        sys.exit(1 if bad else 0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"rlhf_core pulled in: {proc.stdout}\n{proc.stderr[-3000:]}"
