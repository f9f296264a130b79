"""MetaSchedule tuning into a database, resumed, and applied by compile_artifact (slow).

Not for CI: ~5 min per workload on this busy 2-core machine, almost all of it MetaSchedule's
~100 s import in each builder/runner worker process (a one-conv model has 3 workloads: ~15 min).
Run it by hand: ``python3 -m pytest -q -m slow tests/test_tune.py``.
"""

from __future__ import annotations

import pytest
from deploy_helpers import FAST_PROTOCOL, artifact_dir, clip_qdq_model, device_file

from qfa_deploy.deploy import compile_artifact, profile_artifact
from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE
from qfa_deploy.deploy.registry import resolve
from qfa_deploy.deploy.tune import database_sha256, tune_model
from qfa_deploy.errors import QfaError


@pytest.mark.slow
def test_tune_resume_and_apply(tmp_path):
    device = device_file(tmp_path, "x86", name="x86-tune", protocol=FAST_PROTOCOL)
    onnx_path = clip_qdq_model(tmp_path / "one-conv.onnx", bits=(4,))
    db = tmp_path / "db"
    first = tune_model(onnx_path, str(device), db, trials=2, progress=False)
    assert first["tasks"] >= 1 and first["tuned"] == first["tasks"] and first["skipped"] == 0
    again = tune_model(onnx_path, str(device), db, trials=2, progress=False)  # resumable: nothing left to do
    assert again["tuned"] == 0 and again["skipped"] == first["tasks"]

    folder = artifact_dir(tmp_path / "art", onnx_path)
    meta = compile_artifact(folder / "model.onnx", str(device), folder, database=db)
    assert meta["tuning_database"] == database_sha256(db)
    assert meta["schedule"] == f"metaschedule+{resolve(DEFAULT_SCHEDULE, device).label}"
    parity = profile_artifact(folder, str(device))["parity"]
    assert parity["max_abs_diff"] <= 1e-5 and parity["argmax_agree"], parity


def test_not_a_database_is_a_clear_error(tmp_path):
    onnx_path = clip_qdq_model(tmp_path / "m.onnx", bits=(4,))
    with pytest.raises(QfaError, match="is not a MetaSchedule database"):
        compile_artifact(onnx_path, "x86", tmp_path / "out", database=tmp_path)
