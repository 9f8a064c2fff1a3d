"""The SQuAD v1.1 metric (bertc.client.squad) on hand-made cases with known EM and F1,
worked out by hand from the official evaluate-v1.1.py's definitions."""

import pytest

from bertc.client import squad


@pytest.mark.parametrize("prediction,gold,em,f1", [
    ("the Eiffel Tower", "Eiffel Tower", 1.0, 1.0),          # articles dropped
    ("Eiffel", "Eiffel Tower", 0.0, 2 * 1.0 * 0.5 / 1.5),   # P 1, R 1/2
    ("Paris, France.", "paris france", 1.0, 1.0),            # punctuation and case
    ("a cat sat", "the dog sat", 0.0, 0.5),                  # P = R = 1/2
    ("sat sat", "sat", 0.0, 2 * 0.5 * 1.0 / 1.5),           # bag of tokens: common 1
    ("", "anything", 0.0, 0.0),
    ("An  apple!", "apple", 1.0, 1.0),
    ("banana", "an apple", 0.0, 0.0),
])
def test_exact_match_and_f1_of_one_pair(prediction, gold, em, f1):
    assert squad.exact_match_score(prediction, gold) == em
    assert squad.f1_score(prediction, gold) == pytest.approx(f1)


def test_normalisation_is_the_official_one():
    assert squad.normalize_answer("The  Quick,  brown fox's!") == "quick brown foxs"
    assert squad.normalize_answer("theatre an anthem") == "theatre anthem"  # whole words only


def test_max_over_gold_answers_and_mean_over_questions():
    questions = [
        squad.Question("1", "q", "c", ("Denver Broncos", "the Broncos")),
        squad.Question("2", "q", "c", ("Santa Clara, California", "Levi's Stadium")),
        squad.Question("3", "q", "c", ("gold",)),
        squad.Question("4", "q", "c", ("unanswered",)),
    ]
    predictions = {"1": "Broncos", "2": "Santa Clara", "3": "gold"}
    result = squad.evaluate(questions, predictions)
    # q1: EM 1 (vs "the Broncos"); q2: EM 0, F1 max(2*1*(2/3)/(5/3)=0.8, 0) = 0.8;
    # q3: 1, 1; q4: no prediction, 0
    assert result["exact_match"] == pytest.approx(100 * 2 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 0) / 4)


def test_read_squad_refuses_a_file_that_is_not_v1_1(tmp_path):
    from bertc.errors import BertcError
    path = tmp_path / "bad.json"
    path.write_text('{"data": [{"paragraphs": [{"qas": []}]}]}')
    with pytest.raises(BertcError, match="context"):
        squad.read_squad(str(path))
