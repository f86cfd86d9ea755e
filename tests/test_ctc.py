# B batch, T time steps, V labels (blank + alphabet)
import itertools
import logging
import math

import pytest
import torch

from convrnn.tasks.text_metrics import cer, edit_distance, error_counts, wer
from convrnn.layers.base import ModelOutput
from convrnn.tasks.ctc import (CharNgramLM, CTCTask, Lexicon, beam_search, greedy_decode,
                               greedy_decode_batch, required_frames)


def posteriors(rows):
    """Rows of probabilities (T, V) -> log-probabilities."""
    p = torch.tensor(rows, dtype=torch.float64)
    return (p / p.sum(dim=1, keepdim=True)).log()


def labelling_probabilities(log_probs):
    """Sum the probability of every path per labelling: {labels: probability}."""
    t, v = log_probs.shape
    totals = {}
    for path in itertools.product(range(v), repeat=t):
        labels = tuple(k for k, _ in itertools.groupby(path) if k != 0)
        totals[labels] = totals.get(labels, 0.0) + math.exp(sum(log_probs[i, k] for i, k in enumerate(path)))
    return totals


def brute_force_best_labelling(log_probs):
    """The most probable labelling of ``(T, V)``, or of the product of ``(K, T, V)`` models' probabilities."""
    models = [labelling_probabilities(lp) for lp in (log_probs[None] if log_probs.dim() == 2 else log_probs)]
    joint = {labels: math.prod(m.get(labels, 0.0) for m in models) for labels in models[0]}
    return list(max(joint, key=joint.get))


# ---------------------------------------------------------------- metrics

@pytest.mark.parametrize("a,b,d", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("flaw", "lawn", 2),
                                   ("same", "same", 0), (["the", "cat"], ["a", "cat"], 1)])
def test_edit_distance_known_pairs(a, b, d):
    assert edit_distance(a, b) == d
    assert edit_distance(b, a) == d


def test_cer_and_wer_are_corpus_rates():
    refs, hyps = ["kitten", "abcd"], ["sitting", "abcd"]
    assert cer(refs, hyps) == pytest.approx(3 / 10)
    assert wer(["the cat sat", "on the mat"], ["the bat sat", "on mat"]) == pytest.approx(2 / 6)
    assert error_counts(["a b"], ["a  b"], unit="word") == (0, 2)  # whitespace runs split alike
    with pytest.raises(ValueError, match="as many hypotheses"):
        cer(["a"], [])


# ---------------------------------------------------------------- greedy decoding

def test_greedy_collapses_repeats_and_drops_blanks():
    # best path: a a _ a b b _ _ c  -> "a a b c" as labels [1, 1, 2, 3]
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = torch.full((len(path), 4), -5.0)
    lp[torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert greedy_decode(lp) == [1, 1, 2, 3]
    assert greedy_decode(lp, length=5) == [1, 1, 2]
    batch = torch.stack([lp, lp.flip(0)])
    assert greedy_decode_batch(batch, torch.tensor([9, 4])) == [[1, 1, 2, 3], [3, 2]]  # 3 _ _ 2 | 2 1 _ 1 1


# ---------------------------------------------------------------- beam search

def test_beam_finds_the_labelling_greedy_misses():
    # Blank is the best single frame each time (greedy: ""), but "a" has 0.64 of the mass.
    lp = posteriors([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(lp) == []
    assert brute_force_best_labelling(lp) == [1]
    assert beam_search(lp, beam_width=4) == [1]


def test_beam_matches_brute_force_on_random_posteriors():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        lp = torch.randn(4, 3, generator=gen, dtype=torch.float64).log_softmax(-1)
        assert beam_search(lp, beam_width=50) == brute_force_best_labelling(lp)


def test_joint_beam_over_models_is_their_product_not_their_frame_average():
    # Two models read "a" from different frames. The frame average is below one half for "a" at
    # every frame (greedy on it: ""), but each model puts 0.8 on "a": jointly "a" wins.
    first = posteriors([[0.2, 0.8], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    second = posteriors([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    both = torch.stack([first, second])  # (K, T, V)
    average = torch.logsumexp(both, dim=0) - math.log(2)
    assert greedy_decode(average) == []
    assert beam_search(both, beam_width=4) == brute_force_best_labelling(both) == [1]
    assert beam_search(first[None], beam_width=4) == beam_search(first, beam_width=4)  # one model: as before
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        models = torch.randn(3, 4, 3, generator=gen, dtype=torch.float64).log_softmax(-1)
        assert beam_search(models, beam_width=50) == brute_force_best_labelling(models)
    with pytest.raises(ValueError, match=r"\(T, V\) or \(K, T, V\)"):
        beam_search(torch.zeros(2, 2, 3, 4))


def test_task_decodes_and_scores_an_ensembles_members():
    task = CTCTask(["a"])
    first = posteriors([[0.2, 0.8], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    second = posteriors([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    members = torch.stack([first, second])[:, None].float()  # (K, B, T, V), B = 1
    average = torch.logsumexp(members, dim=0) - math.log(2)
    batch = {"targets": torch.tensor([1]), "target_lengths": torch.tensor([1])}
    out = ModelOutput(average, torch.tensor([4]), [], members)
    assert task.decode(ModelOutput(average, torch.tensor([4]))) == [""]
    assert task.decode(out) == ["a"]
    losses = [task.per_sequence_loss(ModelOutput(m, torch.tensor([4])), batch)[0] for m in members]
    torch.testing.assert_close(task.per_sequence_loss(out, batch)[0], (losses[0] + losses[1]) / 2)


def test_beam_width_one_equals_greedy_on_peaked_posteriors():
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        lp = (4 * torch.randn(12, 5, generator=gen, dtype=torch.float64)).log_softmax(-1)
        assert beam_search(lp, beam_width=1) == greedy_decode(lp)


def test_lexicon_forces_a_dictionary_word():
    alphabet = ["a", "c", "r", "t"]
    # "cat" frame by frame, with "r" a close second at the last frame
    lp = posteriors([[0.1, 0.0, 0.8, 0.0, 0.1],
                     [0.1, 0.8, 0.0, 0.0, 0.1],
                     [0.1, 0.0, 0.0, 0.4, 0.5]])
    task = CTCTask(alphabet)
    assert task.to_text(beam_search(lp, 5)) == "cat"
    assert task.to_text(beam_search(lp, 5, lexicon=["car", "arc"], alphabet=alphabet)) == "car"
    lexicon = Lexicon(["car", "cart"])
    assert lexicon.allows("car ca") and not lexicon.allows("cat") and not lexicon.allows("ca", complete=True)


def test_char_lm_changes_the_decision():
    alphabet = ["a", "b", "c"]
    lp = posteriors([[0.0, 0.9, 0.0, 0.0], [0.1, 0.0, 0.4, 0.5]])  # "ac" slightly ahead of "ab"
    lm = CharNgramLM(order=2).fit(["ab", "abab", "bab"] * 5)
    assert lm.score("a", "b") > lm.score("a", "c")
    assert beam_search(lp, 5, alphabet=alphabet) == [1, 3]
    assert beam_search(lp, 5, char_lm=lm, lm_weight=0.5, alphabet=alphabet) == [1, 2]


def test_char_lm_is_a_distribution():
    lm = CharNgramLM(order=3).fit(["hello world", "help"])
    total = sum(math.exp(lm.score("he", ch)) for ch in lm.vocab)
    unseen = math.exp(lm.score("he", "\u2603"))  # any unseen character shares the one extra slot
    assert total + unseen == pytest.approx(1.0)


# ---------------------------------------------------------------- the task

def make_batch(task, texts, ids):
    labels = [task.encode(t) for t in texts]
    return {"targets": torch.tensor([k for seq in labels for k in seq], dtype=torch.long),
            "target_lengths": torch.tensor([len(seq) for seq in labels]), "texts": texts, "ids": ids}


def test_required_frames_counts_repeats_within_targets_only():
    targets = torch.tensor([1, 1, 2, 2, 3, 3, 3])  # "aab" | "b" | "ccc": the b|b seam is no repeat
    assert required_frames(torch.tensor([3, 1, 3]), targets).tolist() == [4, 1, 5]


def test_loss_matches_ctc_loss_when_all_fit():
    torch.manual_seed(0)
    task = CTCTask(["a", "b", "c"])
    batch = make_batch(task, ["ab", "cab"], ["x", "y"])
    y = torch.randn(2, 6, 4)
    got = task.loss(ModelOutput(y, torch.tensor([6, 5])), batch)
    want = torch.nn.functional.ctc_loss(y.log_softmax(-1).transpose(0, 1), batch["targets"], torch.tensor([6, 5]),
                                        batch["target_lengths"], reduction="mean")
    torch.testing.assert_close(got, want)


def test_too_long_targets_are_reported_and_excluded(caplog):
    torch.manual_seed(0)
    task = CTCTask(["a", "b"])
    # 4 frames: "ab" fits; "aa" needs 3 (fits); "abab" fits exactly; "aabb" needs 6; "ababa" needs 5
    batch = make_batch(task, ["ab", "aa", "abab", "aabb", "ababa"], ["l0", "l1", "l2", "l3", "l4"])
    y = torch.randn(5, 4, 3, requires_grad=True)
    with caplog.at_level(logging.WARNING):
        loss = task.loss(ModelOutput(y, torch.full((5,), 4)), batch)
    assert torch.isfinite(loss) and loss > 0
    assert task.skipped_too_long == 2
    assert "2 of 5" in caplog.text and "l3" in caplog.text and "l4" in caplog.text and "l2" not in caplog.text
    kept = {k: v[:3] if k != "targets" else v[:8] for k, v in batch.items()}
    kept["target_lengths"] = batch["target_lengths"][:3]
    torch.testing.assert_close(loss, task.loss(ModelOutput(y[:3], torch.full((3,), 4)), kept))
    loss.backward()
    assert y.grad[3:].abs().sum() == 0 and y.grad[:3].abs().sum() > 0


def test_all_too_long_gives_zero_loss_but_still_counts():
    task = CTCTask(["a"])
    batch = make_batch(task, ["aaa"], ["only"])
    loss = task.loss(ModelOutput(torch.randn(1, 2, 2, requires_grad=True)), batch)
    assert loss.item() == 0.0 and loss.requires_grad
    assert task.skipped_too_long == 1


def test_metrics_accumulate_cer_wer_and_skips():
    task = CTCTask(["a", "b", " "])
    # Frame-exact posteriors spelling "ab a" and "b", references "ab b" and "bb".
    def spell(labels, t):
        y = torch.full((t, 4), -10.0)
        for i, k in enumerate(labels + [0] * (t - len(labels))):
            y[i, k] = 10.0
        return y
    y = torch.stack([spell([1, 2, 3, 1], 5), spell([2], 5)])
    batch = make_batch(task, ["ab b", "bb"], [0, 1])
    metrics = task.new_metrics()
    metrics.update(ModelOutput(y, torch.tensor([5, 2])), batch)  # "bb" needs 3 frames > 2
    result = metrics.compute()
    assert result["cer"] == pytest.approx(2 / 6)  # one substitution + one deletion
    assert result["wer"] == pytest.approx(2 / 3)  # "b"->"a", and "bb"->"b"
    assert result["skipped_too_long"] == 1.0
    alone = {"targets": batch["targets"][:4], "target_lengths": batch["target_lengths"][:1]}
    assert result["loss"] == pytest.approx(task.loss(ModelOutput(y[:1], torch.tensor([5])), alone).item())
    assert task.monitor == "cer" and task.monitor_mode == "min"
    assert CTCTask.from_state_dict(task.state_dict()).alphabet == ["a", "b", " "]


def test_bad_inputs_are_named():
    task = CTCTask(["a", "b"])
    with pytest.raises(ValueError, match=r"expects logits \(B, T, 3\).*got shape \(1, 4, 5\)"):
        task.loss(ModelOutput(torch.randn(1, 4, 5)), make_batch(task, ["a"], [0]))
    with pytest.raises(ValueError, match="outside the alphabet"):
        task.encode("abc")
    with pytest.raises(ValueError, match="distinct"):
        CTCTask(["a", "a"])


def test_decoded_text_has_the_references_whitespace():
    """References have whitespace runs collapsed and none at the ends; so has what every decoder reads."""
    task = CTCTask(" ab")
    frames = [1, 2, 1, 0, 1, 3, 0, 1]  # " a  b " with a blank splitting the double space
    logits = torch.full((1, len(frames), 4), -10.0)
    for t, k in enumerate(frames):
        logits[0, t, k] = 10.0
    out = ModelOutput(logits, torch.tensor([len(frames)]))
    assert task.decode(out) == ["a b"]
    assert task.with_decoding(beam=4).decode(out) == ["a b"]
    assert task.to_text([1, 2, 1, 1, 3, 1]) == " a  b "  # the raw labels keep what the model wrote


def test_unseen_characters_are_named_once_per_set(caplog):
    """Each validation of a run reads the same lines: their unseen characters are named once, in the
    singular for one."""
    task = CTCTask("ab")
    logits = torch.zeros((1, 4, 3))
    out = ModelOutput(logits, torch.tensor([4]))
    with caplog.at_level(logging.WARNING, logger="convrnn.tasks.ctc"):
        for _ in range(2):
            metrics = task.new_metrics()
            metrics.update(out, {"texts": ["ab\u2603"]})
            assert metrics.compute()["unseen_chars"] == 1.0
    said = [r.getMessage() for r in caplog.records if "alphabet" in r.getMessage()]
    assert said == ["1 reference character is not in the model's alphabet and counts as errors: '\u2603' x1"]


def test_characters_named_when_the_data_is_read_are_not_named_again_at_validation(caplog):
    """Training names the validation texts' unseen characters once, when it reads them; its validations
    then score them as errors without repeating the warning. A character not named before still is."""
    from convrnn.tasks.ctc import name_unseen
    task = CTCTask("ab")
    out = ModelOutput(torch.zeros((1, 4, 3)), torch.tensor([4]))
    with caplog.at_level(logging.WARNING, logger="convrnn.tasks.ctc"):
        name_unseen({"\u2602": 1}, "validation")
        metrics = task.new_metrics()
        metrics.update(out, {"texts": ["ab\u2602"]})
        assert metrics.compute()["unseen_chars"] == 1.0
        metrics = task.new_metrics()
        metrics.update(out, {"texts": ["a\u2601"]})
        metrics.compute()
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "validation texts use 1 character that no training text has ('\u2602'): they count as errors"
    assert len(said) == 2 and "'\u2601' x1" in said[1]


def test_a_language_model_fits_one_long_line_in_linear_time(monkeypatch):
    """A corpus without line breaks is one text: each character's context is cut from its last n - 1
    characters, never from a copy of all before it (quadratic: a megabyte took minutes)."""
    text = "the quick brown fox jumps over the lazy dog " * 200
    seen = []
    context = CharNgramLM._context
    monkeypatch.setattr(CharNgramLM, "_context", lambda self, prev: seen.append(len(prev)) or context(self, prev))
    lm = CharNgramLM(3).fit([text])
    assert max(seen) == 2 and len(seen) == len(text)
    assert lm.counts["th"]["e"] == 400 and lm.counts[CharNgramLM.START * 2]["t"] == 1
