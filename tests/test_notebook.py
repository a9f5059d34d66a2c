"""notebooks/quickstart.ipynb executes end to end (tiny model, a few steps) so it cannot rot.

The notebook's parameter cell (tagged "parameters") is followed by an injected cell that
overrides its values, as papermill does; everything else runs as committed.
"""

import json
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
STEPS = 3
# Tiny model and held-out set: the run is about compiling, not learning.
OVERRIDES = {
    "model.width": 16,
    "model.heads": 2,
    "model.layers": "attn,gdn",
    "model.mlp_ratio": 1,
    "model.gdn_impl": "recurrent",  # compiles faster than the chunked op
    "train.batch_size": 4,
    "train.eval_size": 8,
    "train.eval_every": 2,
    "train.log_every": 1,
}


def _outputs(cell) -> str:
    """stdout/stderr text and text/plain results of a cell, joined."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
            parts.append(out["data"].get("text/markdown", ""))
    return "".join(parts)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_quickstart_executes(tmp_path, monkeypatch):
    # The kernel inherits the environment: CPU, and XLA's cheapest backend optimisation (as
    # the other tests' jits do), since compiling is nearly all of this test's time.
    flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_backend_optimization_level=0".strip())
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    params = nb.cells[index].source
    overrides = {
        "TRAIN_STEPS": STEPS,
        "RUN_ROOT": str(tmp_path / "runs"),
        "CONFIG_OVERRIDES": OVERRIDES,
    }
    for name in overrides:  # An override of a name the notebook no longer has would be a no-op.
        assert re.search(rf"^{name} = ", params, re.M), f"parameter cell lost {name}"
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)

    client = nbclient.NotebookClient(
        nb,
        timeout=300,  # per cell; the whole notebook takes about a minute on 2 busy cores
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # cwd: notebooks/
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    # Both runs trained to STEPS and evaluated there.
    for n in (1, 2):
        workdir = tmp_path / "runs" / f"n{n}"
        config = json.loads((workdir / "config.json").read_text())
        assert config["sleep"]["passes"] == n and config["train"]["steps"] == STEPS
        assert config["model"]["width"] == 16 and config["model"]["layers"] == "attn,gdn"
        evals = [
            json.loads(line)
            for line in (workdir / "metrics.jsonl").read_text().splitlines()
            if "eval/accuracy" in line
        ]
        assert [e["step"] for e in evals] == [2, 3]
        assert (workdir / "checkpoints" / str(STEPS)).is_dir()

    everything = "\n".join(_outputs(cell) for cell in nb.cells if cell.cell_type == "code")
    # The plot cell drew its figure and the run table.
    images = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) == 1
    assert "| run | N |" in everything
    # Depo rendered in the paper's notation.
    assert re.search(r"[a-z]{2}->[a-z]{2},", everything)
    assert re.search(r"\d+ hops after [a-z]{2}: [a-z]{2}", everything)
    # The streaming demo on the run sleep_lm.load_run rebuilt (N = 2, its last checkpoint).
    assert f"N = 2, L = 24, checkpoint step {STEPS}" in everything
    # Four context windows, each slept on when its 24th token arrived.
    assert len(re.findall(r"23/24 tokens awake .* -> full, slept -> 0/24 tokens", everything)) == 4
    assert re.search(r"labels predicted: \[[01], [01], [01], [01]\]", everything)
    streamed = re.findall(
        r"held-out (\w+): streaming ([\d.]+) \| trainer's eval ([\d.]+)", everything
    )
    assert [name for name, _, _ in streamed] == ["token_accuracy", "accuracy"]
    for _, stream, trained in streamed:
        # The same metric of the same checkpoint by two paths (batched Algorithm 1 in the
        # trainer, token by token in the session): they agree to float rounding of the logits.
        assert float(stream) == pytest.approx(float(trained), abs=1e-4)
