"""The bake-off's decision rules as pure functions, on made-up scores and validation curves."""

from __future__ import annotations

import math

import pytest

from visionzoo.choose.bakeoff.decision import (
    choose_finalists,
    close_to_leader,
    closeness,
    halving_verdict,
    paired_gap,
    rung_every,
    standard_error,
)


def test_paired_gap_is_the_mean_difference_and_its_standard_error():
    gap, error = paired_gap([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])  # differences 2, 3, 1
    assert gap == pytest.approx(2.0) and error == pytest.approx(math.sqrt(1.0 / 3))
    assert paired_gap([1.0], [0.5]) == (0.5, 0.0)
    assert paired_gap([1.0, float("nan")], [0.5, 2.0]) == (0.5, 0.0)  # a class missing on one side is left out


def test_a_clear_leader_gets_the_only_fine_tune():
    scores = {"a": 1.0, "b": 0.5, "c": 0.2}
    per_class = {"a": [1.0, 1.1, 0.9, 1.0], "b": [0.5, 0.6, 0.4, 0.5], "c": [0.2] * 4}  # a ahead on every class
    finalists, left_out = choose_finalists(scores, per_class, most=3)
    assert finalists == ["a"]
    assert left_out["b"].startswith("rank 2, clearly behind a") and left_out["c"].startswith("rank 3")


def test_a_tie_within_the_noise_fine_tunes_both():
    scores = {"a": 1.0, "b": 0.95, "c": 0.2}
    per_class = {"a": [1.4, 0.6, 1.2, 0.8], "b": [0.7, 1.3, 0.9, 0.9], "c": [0.3, 0.1, 0.25, 0.15]}
    finalists, left_out = choose_finalists(scores, per_class, most=3)
    assert finalists == ["a", "b"]  # b's gap of 0.05 is well within the spread of the per-class differences
    assert "clearly behind a" in left_out["c"]
    # the cap still holds: --finetune-top 1 keeps only the leader, and says so
    finalists, left_out = choose_finalists(scores, per_class, most=1)
    assert finalists == ["a"] and left_out["b"] == "rank 2 > --finetune-top 1"
    assert choose_finalists(scores, per_class, most=0)[0] == []


def test_the_leader_of_another_score_joins_while_there_is_room():
    scores = {"a": 1.0, "b": 0.5, "c": 0.2}
    per_class = {"a": [1.0, 1.1, 0.9, 1.0], "b": [0.5, 0.6, 0.4, 0.5], "c": [0.2] * 4}  # a clearly ahead
    finalists, left_out = choose_finalists(scores, per_class, most=2, other_leaders=["c", "a"])
    assert finalists == ["a", "c"]  # the k-NN (say) prefers c: the scores disagree, so c is fine-tuned too
    assert left_out["b"].endswith("and the best by no other score")
    finalists, left_out = choose_finalists(scores, per_class, most=1, other_leaders=["c"])
    assert finalists == ["a"] and left_out["c"] == "rank 3 > --finetune-top 1"


def test_the_rung_is_at_half_the_schedule():
    assert [rung_every(e) for e in (1, 2, 3, 6, 7, 10)] == [1, 1, 2, 3, 4, 5]


def test_halving_stops_only_after_half_and_beyond_the_noise():
    # a bigger model still catching up at a third of the schedule is not judged there
    curves = {"small": {2: 0.70, 3: 0.80, 6: 0.84}, "big": {2: 0.50, 3: 0.79}}
    assert halving_verdict("big", curves, 6, num_val=1000) is None  # at half it trails by 1 point: SE is 1.26
    curves["big"][3] = 0.70
    assert halving_verdict("big", curves, 6, num_val=1000) == (3, 0.70, 0.80)  # 10 points behind: stopped
    assert halving_verdict("small", curves, 6, num_val=1000) is None
    # the same 1-point gap on 100,000 images is beyond the noise
    curves["big"][3] = 0.79
    assert halving_verdict("big", curves, 6, num_val=100_000) == (3, 0.79, 0.80)
    assert halving_verdict("big", {"big": {6: 0.1}, "small": {6: 0.9}}, 6) is None  # the last epoch is no rung
    three = {"a": {2: 0.9}, "b": {2: 0.8}, "c": {2: 0.7}}  # of three at a rung, the best two continue
    assert [halving_verdict(k, three, 4, num_val=1000) is None for k in "abc"] == [True, True, False]
    ties = {"a": {2: 0.9}, "b": {2: 0.9}}
    assert halving_verdict("b", ties, 4) is None


def test_finalists_within_one_standard_error_go_to_the_full_validation_set():
    assert standard_error(0.84, 1000) == pytest.approx(math.sqrt(0.84 * 0.16 / 1000))
    close = close_to_leader({"lite0": 0.833, "lite2": 0.829, "lite1": 0.80}, 1000)
    assert close == ["lite0", "lite2"]  # 0.4 points apart with a standard error of 1.18; lite1 is 3.3 behind
    assert close_to_leader({"lite0": 0.833, "lite2": 0.829}, 1_000_000) == ["lite0"]
    said = closeness({"lite0": 0.833, "lite2": 0.829}, 1000, {"lite2": 0.847, "lite0": 0.833}, 5000)
    assert said.startswith("close: lite0 83.30%, lite2 82.90% on the 1000-image selection, 0.40 points apart")
    assert "standard error of 1.18 points" in said
    assert said.endswith("decided on all 5000 validation images: lite2 84.70%, lite0 83.30%")
    assert "nothing more can tell them apart" in closeness({"a": 0.5, "b": 0.49}, 100)


def _close_finalists(tmp_path, monkeypatch, selection_kept, full):
    """Two finished fine-tunes 0.4 points apart on a 1,000-image selection; `full` their top-1 on all of val."""
    from types import SimpleNamespace

    from visionzoo.choose.bakeoff import result as stage
    from visionzoo.choose.bakeoff.state import BakeoffState
    from visionzoo.choose.candidates import Candidate

    evaluated = []
    monkeypatch.setattr(stage, "export_winner", lambda c, *args: ("model.onnx", "visionzoo export"))
    monkeypatch.setattr(stage, "_rest_of_val", lambda request, splits, kept: None)
    monkeypatch.setattr(stage, "_full_val_top1", lambda c, state, rest: evaluated.append(c.name) or full[c.name])
    lite0 = Candidate("efficientnet_lite0", "a.pth", latency_ms=2.0, finetune_top1=0.833, status="fine-tuned",
                      run_dir=str(tmp_path / "lite0"))
    lite2 = Candidate("efficientnet_lite2", "b.pth", latency_ms=4.0, finetune_top1=0.829, status="fine-tuned",
                      run_dir=str(tmp_path / "lite2"))
    request = SimpleNamespace(out=tmp_path, target="cpu", data="builtin:shapes")
    splits = SimpleNamespace(classes=["a", "b"], val=list(range(5000)))
    winner, _ = stage.choose_winner([lite0, lite2], [lite0, lite2], request, BakeoffState(tmp_path, {}), splits,
                                    selection_kept, 1000)
    return winner, evaluated


def test_a_close_finish_is_decided_on_the_full_validation_set(tmp_path, monkeypatch):
    winner, evaluated = _close_finalists(tmp_path, monkeypatch, list(range(1000)),
                                         {"efficientnet_lite0": 0.833, "efficientnet_lite2": 0.847})
    assert sorted(evaluated) == ["efficientnet_lite0", "efficientnet_lite2"]  # both, not only the selection's best
    assert winner["name"] == "efficientnet_lite2" and winner["top1"] == 0.847
    assert winner["decision"].startswith("close: efficientnet_lite0 83.30%, efficientnet_lite2 82.90% on the "
                                         "1000-image selection")
    assert winner["decision"].endswith("all 5000 validation images: efficientnet_lite2 84.70%, efficientnet_lite0 83.30%")


def test_a_close_finish_on_the_whole_validation_set_says_so_and_evaluates_nothing(tmp_path, monkeypatch):
    winner, evaluated = _close_finalists(tmp_path, monkeypatch, None, {})
    assert evaluated == [] and winner["name"] == "efficientnet_lite0"
    assert "nothing more can tell them apart" in winner["decision"]


def test_the_full_validation_top1_scores_only_the_images_outside_the_selection(tmp_path, monkeypatch):
    """The selection's part comes from the fine-tune's own validation of best/; evaluate sees the rest, once."""
    from types import SimpleNamespace

    import numpy as np

    import visionzoo.evaluation
    from visionzoo.choose.bakeoff import result as stage
    from visionzoo.choose.bakeoff.state import BakeoffState
    from visionzoo.choose.candidates import Candidate
    from visionzoo.data.samples import FileSamples

    paths = [str(tmp_path / f"{i}.jpg") for i in range(10)]
    splits = SimpleNamespace(classes=["a", "b"], val=FileSamples(paths, np.array([0, 1] * 5)))
    rest = stage._rest_of_val(SimpleNamespace(out=tmp_path), splits, np.array([0, 3, 4, 7]))
    rows = (tmp_path / "val-rest.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [paths[i] for i in (1, 2, 5, 6, 8, 9)]
    assert (rest.num_rest, rest.num_selection) == (6, 4)

    seen = []
    monkeypatch.setattr(visionzoo.evaluation, "evaluate", lambda model, data: seen.append(data) or {"top1": 0.5})
    state = BakeoffState(tmp_path, {})
    tuned = Candidate("resnet18", "w", finetune_top1=0.75, status="fine-tuned", run_dir=str(tmp_path / "run"))
    assert stage._full_val_top1(tuned, state, rest) == pytest.approx((3 + 3) / 10)  # 3 of 4 and 3 of 6
    assert seen == [rest.csv]
    assert stage._full_val_top1(tuned, state, rest) == pytest.approx(0.6) and len(seen) == 1  # saved, not redone
