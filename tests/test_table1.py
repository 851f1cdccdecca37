"""evaluation.table1: the chapter's rows beside measured ones, verdicts from rules with
intervals, n/a where a measure does not apply, and no control passing anything."""
import pytest

from chapter6_utils import evaluation as ev


@pytest.fixture(scope="module")
def small():
    """Two cheap methods and the three controls on 32 images, 3 seeds, two tests."""
    return ev.evaluate(methods=["gradient", "saliency"], tests=["independent", "data"], steps=8)


def test_no_control_passes_any_measure(small):
    for measure in ev.MEASURES:
        for control in ev.CONTROLS:
            assert small.verdict(measure, control) != "pass", (measure, control, small.estimate(measure, control))


def test_verdicts_follow_their_intervals_and_na_where_nothing_applies(small):
    for measure in ev.MEASURES:
        for m in small.methods + small.controls:
            e, v = small.estimate(measure, m), small.verdict(measure, m)
            if e is None:
                assert v == "n/a", (measure, m)
                continue
            assert v in ev.VERDICTS
            if measure in ev.TESTS:
                assert v == ev.verdict(e, ev.TESTS[measure].threshold, ev.TESTS[measure].better)
    # conservation is a property of signed maps only
    assert small.verdict("conservation", "saliency") == "n/a" and small.estimate("conservation", "saliency") is None
    assert small.estimate("conservation", "gradient") is not None
    # tests that were not run are n/a, not pass
    assert small.verdict("cascading", "gradient") == "n/a"
    # every interval rests on 32 images (and 3 seeds for the randomisation tests)
    assert small.estimate("independent", "gradient").n_seeds == 3
    assert small.estimate("deletion", "gradient").n_images == 32


def test_the_table_keeps_the_chapters_rows_and_splits_deconvnet_from_guided_backprop(small):
    table = ev.table1(small)
    text = str(table)
    assert "Gradient" in text and "Control: input edges" in text and "n/a" in text
    assert ev.CHAPTER_TABLE["guided_backprop"]["sanity"] == "Fails"
    # the chapter's "Fails (Guided BP)" is not the deconvnet's
    assert ev.CHAPTER_TABLE["deconvnet"]["sanity"] != "Fails"
    assert ev.CHAPTER_TABLE["rollout"]["signed"].startswith("Directionally")
    rows = {r["method"]: r for r in table.rows()}
    assert rows["saliency"]["chapter question"] == "Sensitivity"
    assert rows["saliency"]["conservation"] == (None, "n/a")
    assert all(rule.startswith("pass if") for rule in ev.RULES.values())
    assert "deletion" in table.details() and "Sensitivity" in table.qualitative()


def test_bad_requests_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown control 'blur'"):
        ev.evaluate(methods=["gradient"], controls=["blur"])
    with pytest.raises(ValueError, match="unknown method 'gradients'"):
        ev.evaluate(methods=["gradients"])
    with pytest.raises(ValueError, match="n_images"):
        ev.evaluate(methods=["gradient"], n_images=8)
    with pytest.raises(TypeError, match="either an evaluation"):
        ev.table1(ev.Evaluation([], [], {}, {}, {}), n_images=32)
