"""Evaluate holds one config: image and population from the dataset, train settings from
each job's run.json. A given config that contradicts them is refused naming the first
differing key; train keys that decided nothing evaluated are recorded as given, not used,
and report.md's Config section shows what produced the numbers (real dataset, real
trained jobs, the real evaluate command)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import write_config
from tests.evaluate.test_eval_faults import evaluate_in_process

MODELS = [{"name": "model1", "p1": 0.2, "p2": 0.3}, {"name": "model2", "p1": 0.2, "p2": 0.2},
          {"name": "model3", "p1": 0.0, "p2": 0.0}]


@pytest.mark.parametrize("over, says", [
    ({"image": {"size": 48}}, "was made from another config (it differs at image.size: 32 -> 48"),
    ({"seed": 7}, "it differs at seed: "),
    ({"population": {"lens_light_shape": "mass"}}, "it differs at population.lens_light_shape"),
    ({"train": {"network": {"conv1_filters": 8}}},
     "model1/fold-0 was trained with other settings than the given config (they differ at "
     "train.network.conv1_filters: 16 -> 8"),
    ({"train": {"models": [{**MODELS[0], "p1": 0.5}, *MODELS[1:]]}},
     "they differ at train.models[model1].p1: 0.2 -> 0.5"),
])
def test_a_contradicting_config_is_refused_naming_the_key(tmp_path, capsys, eval_cfg, eval_data,
                                                          eval_runs, over, says):
    cfg = write_config(tmp_path / "other.yaml", base=eval_cfg, **over)
    code, err = evaluate_in_process(capsys, cfg, eval_data, eval_runs, tmp_path / "report")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert says in err
    assert not (tmp_path / "report" / "table1.csv").exists()


def test_report_shows_what_produced_the_numbers(tmp_path, capsys, eval_cfg, eval_data, eval_runs,
                                                plain_report):
    """train.epochs and train.device given other values: not used (the jobs were trained
    for 1 epoch on the CPU), said so; the Config section shows the dataset's sections and
    the jobs' recorded train settings, never the given train section."""
    out = tmp_path / "report"
    shutil.copytree(plain_report[1], out)   # the cached predictions: only the report is written
    cfg = write_config(tmp_path / "given.yaml", base=eval_cfg, train={"epochs": 9},
                       evaluate={"figures": False})
    code, err = evaluate_in_process(capsys, cfg, eval_data, eval_runs, out)
    assert code == 0, err
    text = (out / "report.md").read_text()
    config = text[text.index("## Config"):]
    assert "Given, not used" in config
    assert "`train.epochs: 1 -> 9 (model1/fold-0, model1/fold-1, model2/fold-0, model3/fold-0)`" \
        in config
    blocks = [yaml.safe_load(b.split("```", 1)[0]) for b in config.split("```yaml\n")[1:]]
    dataset, *trains, evaluate = blocks
    assert set(dataset) == {"seed", "image", "dataset", "population"}
    assert dataset["image"]["size"] == 32 and dataset["dataset"]["n_images"] == 120
    assert trains and all(t["epochs"] == 1 for t in trains)       # what the jobs ran
    assert {(t["p1"], t["p2"]) for t in trains} == {(0.2, 0.3), (0.2, 0.2), (0.0, 0.0)}
    assert evaluate["evaluate"]["figures"] is False
    assert "epochs: 9" not in config.replace("1 -> 9", "")
    tex = (out / "table1.tex").read_text()
    assert "epochs" not in tex
