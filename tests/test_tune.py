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


def test_a_corrupt_database_or_an_unknown_op_is_one_line_before_tuning(tmp_path):
    onnx_path = clip_qdq_model(tmp_path / "m.onnx", bits=(4,))
    db = tmp_path / "db"
    db.mkdir()
    (db / "database_workload.json").write_text("garbage\n")
    (db / "database_tuning_record.json").write_text("")
    with pytest.raises(QfaError, match="cannot read the tuning database .*db: .*garbage"):
        tune_model(onnx_path, "x86", db, trials=1, progress=False)

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("FooBar", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "foo.onnx")
    fresh = tmp_path / "fresh-db"
    with pytest.raises(QfaError, match="TVM cannot import .*foo.onnx: .*FooBar"):
        tune_model(tmp_path / "foo.onnx", "x86", fresh, trials=1, progress=False)
    assert not fresh.exists()  # refused before the database folder is made
