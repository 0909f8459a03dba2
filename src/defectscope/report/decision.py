"""The report's first section, the decision: the verdict counts in plain words, how the threshold
was set in one sentence (the technical rule collapsed below it) and the histogram."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from defectscope.methods.verdict import has_guard_band, is_uncalibrated
from defectscope.report.cards import ReportEntry
from defectscope.report.histogram import verdict_histogram
from defectscope.report.markup import VERDICT_ORDER, escape, finite_number, key_value_table, percent


def _counts(entries: Sequence[ReportEntry], verdict_counts: Mapping[str, int] | None) -> dict[str, int] | None:
    """anomalous / review / normal counts of the whole run (``verdict_counts`` when the entries
    are only part of it), None when no part has a verdict."""
    if verdict_counts is not None:
        counts = {word: int(verdict_counts.get(word, 0)) for word in VERDICT_ORDER}
    else:
        judged = [entry.verdict for entry in entries if entry.verdict is not None]
        counts = {word: judged.count(word) for word in VERDICT_ORDER}
    return counts if sum(counts.values()) else None


def threshold_sentence(settings: Mapping[str, Any]) -> str:
    """How the verdict was reached, in one plain sentence built from the run's settings
    (``threshold``, ``threshold_applies_to``, ``false_alarm_rate``, ``good``, ``method``,
    ``review_threshold``, ``review_budget``); empty when the run had no threshold."""
    threshold = finite_number(settings.get("threshold"))
    rate = finite_number(settings.get("false_alarm_rate"))
    budget = f"at most {percent(rate)} of good parts" if rate is not None else "few good parts"
    if threshold is None:
        return _watch_sentence(settings, rate)
    if settings.get("threshold_applies_to") == "nfa":
        return (
            f"A part is called anomalous when the method's statistical test finds a region in its anomaly map that "
            f"chance alone would produce fewer than {threshold:g} time(s) on average (NFA at most {threshold:g}); "
            "this is a test on the map, not a cut on one score per part, so the histogram shows the score without a "
            "threshold line."
        )
    good = settings.get("good")
    if is_uncalibrated(settings.get("threshold_rule")):
        source = "fixed by default, because the model had no normal images to calibrate it on: its false-alarm rate is unknown"
    elif good:
        source = f"set on the known-good images in {good} so that {budget} are flagged"
    elif str(settings.get("method", "")).lower() in ("prn", "uflow") or settings.get("protocol"):
        source = f"set on normal training images the model did not learn from, so that {budget} are flagged"
    else:
        source = (
            f"estimated from this batch alone (no known-good images were given), aiming to flag {budget}; "
            "give --good with known-good images for a cut you can rely on"
        )
    if has_guard_band(settings.get("threshold_rule")):  # too few good images for their ranks alone
        source += (
            "; with so few of them the cut lies above their highest score by a margin estimated from their scores, "
            "which assumes good parts do not score much higher than those images suggest"
        )
    sentence = f"A part is called anomalous when its verdict score is above {threshold:.4g}, a cut {source}."
    review_from = finite_number(settings.get("review_threshold"))
    if review_from is not None:
        sentence += (
            f" Parts scoring between {review_from:.4g} and {threshold:.4g} go to review: there the scores cannot "
            "tell good parts from defective ones"
        )
        review_budget = finite_number(settings.get("review_budget"))
        sentence += f" (at most {percent(review_budget)} of the batch)." if review_budget is not None else "."
    return sentence


def _watch_sentence(settings: Mapping[str, Any], rate: float | None) -> str:
    """The rule of a ``watch`` run (its settings name a ``scorer``; the cut moves with the bank)."""
    scorer = settings.get("scorer")
    if scorer == "model":
        return f"Each part gets the verdict of the trained model {settings.get('model')}."
    if scorer not in ("rolling bank", "good") or rate is None:
        return ""
    if scorer == "good":
        reference = f"the known-good images in {settings.get('good')}"
    else:
        reference = f"the last {settings.get('bank_size', 'few')} parts judged normal"
    return (
        f"Each part is called anomalous when at most {percent(rate)} of the reference parts ({reference}) score as "
        f"high as it does (a conformal test that flags at most {percent(rate)} of good parts); the cut moves as the "
        "reference parts change, so the histogram shows the scores without a threshold line."
    )


def _how_section(settings: Mapping[str, Any]) -> str:
    """The technical rule behind the sentence, collapsed."""
    rows = {key: settings[key] for key in ("threshold", "review_threshold", "threshold_applies_to", "false_alarm_rate",
                                           "review_budget", "good") if settings.get(key) is not None}
    rule = settings.get("threshold_rule")
    if not rule and not rows:
        return ""
    text = f"<p>{escape(rule)}</p>" if rule else ""
    return f'<details class="how"><summary>how the threshold was set</summary>{text}{key_value_table(rows) if rows else ""}</details>'


def decision_section(
    entries: Sequence[ReportEntry],
    settings: Mapping[str, Any],
    *,
    verdict_counts: Mapping[str, int] | None,
    histogram: Sequence[tuple[float, str | None]] | None,
    skipped_count: int,
) -> str:
    """The decision first: the counts in plain words, the rule in one sentence (the technical
    rule collapsed below it) and the histogram of the verdict scores with the cuts drawn on it."""
    counts = _counts(entries, verdict_counts)
    threshold = finite_number(settings.get("threshold"))
    review_from = finite_number(settings.get("review_threshold"))
    no_cut = settings.get("threshold_applies_to") == "nfa"
    skipped = f'<p class="meta">{skipped_count} file(s) could not be read and were not judged (listed below).</p>' if skipped_count else ""
    if histogram is None:
        by_verdict_score = not no_cut and any(finite_number(entry.verdict_score) is not None for entry in entries)
        histogram = [(entry.verdict_score if by_verdict_score else entry.score, entry.verdict) for entry in entries]
    if counts is None:
        lead = f'<p class="lead" id="verdicts"><strong>{len(entries)} parts ranked, most anomalous first</strong></p>'
        rule = '<p class="rule">This method gives no verdict of its own: look at the highest scores first.</p>'
        chart = verdict_histogram([v for v, _ in histogram], [None] * len(histogram), axis_label="score")
        return f'<section id="decision">{lead}{rule}{skipped}{chart}</section>'
    total = sum(counts.values())
    review = counts["review"]
    to_review = f', <span class="n-review">{review} to review</span>' if review or review_from is not None else ""
    lead = (
        f'<p class="lead" id="verdicts"><strong><span class="n-anomalous">{counts["anomalous"]} of {total} parts anomalous</span>'
        f'{to_review}</strong><span class="meta">, {counts["normal"]} normal</span></p>'
    )
    sentence = threshold_sentence(settings)
    rule = f'<p class="rule">{escape(sentence)}</p>' if sentence else ""
    values = [v for v, _ in histogram]
    words = [w for _, w in histogram]
    if no_cut or all(finite_number(v) is None for v in values):
        chart = verdict_histogram(values, words, axis_label="score (the verdict is no cut on it)")
    else:
        chart = verdict_histogram(values, words, threshold=None if no_cut else threshold, review_from=review_from,
                                  axis_label="verdict score (the number the threshold applies to)")
    return f'<section id="decision">{lead}{rule}{_how_section(settings)}{skipped}{chart}</section>'
