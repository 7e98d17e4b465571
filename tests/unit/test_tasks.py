import pytest

from harness.tasks import get_task, list_tasks, register
from harness.tasks.length import length_gold
from harness.tasks.sort import sort_gold


def test_registry_lists_three_tasks_with_descriptions():
    tasks = list_tasks()
    assert {"sentiment", "sort", "length"} <= set(tasks)
    assert all(desc for desc in tasks.values())


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        register("sentiment", "again")(lambda: None)


def test_unknown_task():
    with pytest.raises(KeyError, match="chess"):
        get_task("chess")


@pytest.mark.parametrize("name", ["sentiment", "sort", "length"])
def test_splits_are_disjoint_and_corpus_nonempty(name):
    t = get_task(name)
    assert t.train_prompts and t.eval_prompts and t.sft_corpus
    assert not set(t.train_prompts) & set(t.eval_prompts)


def test_sort_gold_by_hand():
    p = "sort : 3 1 2 ="
    assert sort_gold(p, "1 2 3") == 1.0
    assert sort_gold(p, "1 3 2") == pytest.approx(1 / 3)
    assert sort_gold(p, "1 2 3 3") == pytest.approx(3 / 4)  # an extra token counts as wrong
    assert sort_gold(p, "1") == pytest.approx(1 / 3)
    assert sort_gold(p, "") == 0.0


def test_length_gold_by_hand():
    p = "write 4 words about tea :"
    assert length_gold(p, "la la la la") == 1.0
    assert length_gold(p, "la la") == 0.5
    assert length_gold(p, "la la la la la la") == 0.5
    assert length_gold(p, "la " * 9) == 0.0


def test_sentiment_gold_is_vader():
    t = get_task("sentiment")
    pos, neg, neu = t.gold(["x"] * 3, ["was great and wonderful .", "was terrible and awful .", ""], [True] * 3)
    assert pos > 0.5 and neg < -0.5 and neu == 0.0


def test_sentiment_sft_corpus_starts_near_neutral():
    t = get_task("sentiment")
    pairs = t.sft_corpus[:1000]
    golds = t.gold([p for p, _ in pairs], [c for _, c in pairs], [True] * len(pairs))
    assert abs(sum(golds) / len(golds)) < 0.15
    assert min(golds) < -0.5 and max(golds) > 0.5


@pytest.mark.parametrize(
    ("name", "prompt", "completion", "worst"),
    [
        # each of these would score well if it had ended: a 14-word answer to "write 12 words"
        # reads 0.83 by length alone, a right sort 1.0, a glowing review > 0.5
        ("length", "write 12 words about tea :", " ".join(["la"] * 14), 0.0),
        ("sort", "sort : 3 1 2 =", "1 2 3", 0.0),
        ("sentiment", "my movie review : the plot", "was great and wonderful .", -1.0),
    ],
)
def test_a_response_without_eos_scores_the_worst_gold(name, prompt, completion, worst):
    t = get_task(name)
    ended, unfinished = t.gold([prompt] * 2, [completion] * 2, [True, False])
    assert ended > worst + 0.5
    assert unfinished == worst == t.gold_range[0]
