"""Lexical helpers: sentence splitting, tokens/keywords, negation scope, quantities."""

from m3.text.lexical import (
    Quantity,
    extract_quantities,
    has_negation,
    is_negated,
    keywords,
    negation_cues,
    quantities_agree,
    same_quantity,
    split_sentences,
    stem,
    tokenize,
)

MEDICAL_PARAGRAPH = """**Summary:** Your child most likely has a viral cold, e.g. a rhinovirus. Dr. Smith agrees.
- Give 2.5 mL/kg of fluids every 4-6 hours.
- If the fever is above 38.5 °C for 3 days, call us. Take it b.i.d. with food.
1. Avoid antibiotics! They won't help. Is it serious? Probably not.
The dose is 5 mg. Take it at 8 a.m. and 8 p.m. daily."""


def test_split_sentences_tricky_medical_paragraph():
    assert split_sentences(MEDICAL_PARAGRAPH) == [
        "Summary: Your child most likely has a viral cold, e.g. a rhinovirus.",
        "Dr. Smith agrees.",
        "Give 2.5 mL/kg of fluids every 4-6 hours.",
        "If the fever is above 38.5 °C for 3 days, call us.",
        "Take it b.i.d. with food.",
        "Avoid antibiotics!",
        "They won't help.",
        "Is it serious?",
        "Probably not.",
        "The dose is 5 mg.",
        "Take it at 8 a.m. and 8 p.m. daily.",
    ]


def test_split_sentences_edge_cases():
    assert split_sentences("") == []
    assert split_sentences("  \n- \n") == []
    assert split_sentences("No trailing period") == ["No trailing period"]
    # a title or "e.g." before a capitalised word does not end the sentence
    assert split_sentences("Use an NSAID, e.g. Ibuprofen. Then rest.") == [
        "Use an NSAID, e.g. Ibuprofen.",
        "Then rest.",
    ]


def test_tokenize_lowercases_and_keeps_contractions_and_decimals():
    assert tokenize("Don’t take 2.5 mg of Tylenol!") == ["don't", "take", "2.5", "mg", "of", "tylenol"]


def test_stem_conflates_inflections():
    assert {stem(w) for w in ["advise", "advises", "advised", "advising"]} == {"advis"}
    assert stem("antibiotics") == stem("antibiotic")
    assert stem("allergies") == "allergy"
    assert stem("stopped") == "stop"
    assert stem("2.5") == "2.5"


def test_keywords_drop_scaffolding_stopwords_and_negation():
    assert keywords("Advises the patient to seek emergency care immediately.") == [
        "seek",
        "emergency",
        "car",
        "immediately",
    ]
    assert keywords("Do not give antibiotics to the child") == ["giv", "antibiotic", "child"]
    # medically meaningful short words survive
    assert "iv" in keywords("Start IV fluids in the ER") and "er" in keywords("Start IV fluids in the ER")


def test_negation_cues_and_scope():
    assert negation_cues("Don't drive and avoid alcohol; never mix them") == ["don't", "avoid", "never"]
    assert has_negation("The patient denies chest pain")
    assert has_negation("NSAIDs are contraindicated here")
    assert not has_negation("Take amoxicillin for ten days")
    terms = ["antibiotics", "infection"]
    assert is_negated("Antibiotics will not help a viral infection", terms)
    assert not is_negated("You should take antibiotics for this infection", terms)
    # the cue governs a different clause
    assert not is_negated("Take antibiotics, not ibuprofen", ["antibiotics"])
    assert is_negated("Take antibiotics, not ibuprofen", ["ibuprofen"])
    # too far from the cue
    assert not is_negated(
        "No, you should go ahead and keep on taking all of your antibiotics", ["antibiotics"], 6
    )


def test_quantities_normalise_spelling_and_distinguish_values():
    assert extract_quantities("50mg") == extract_quantities("50 mg") == [Quantity(50.0, "mg")]
    assert extract_quantities("5 mg") != extract_quantities("50 mg")
    assert extract_quantities("2.5 mL/kg") == [(2.5, "ml/kg")]
    assert extract_quantities("fever of 38.5 °C") == [(38.5, "degc")]
    assert extract_quantities("38.5C") == [(38.5, "degc")]
    assert extract_quantities("10 mg/kg per day") == [(10.0, "mg/kg/day")]
    assert extract_quantities("1,000 milligrams") == [(1000.0, "mg")]


def test_quantities_frequencies_and_ranges():
    assert extract_quantities("3 times a day") == [(3.0, "times/day")]
    assert extract_quantities("three times daily") == [(3.0, "times/day")]
    assert extract_quantities("twice a week") == [(2.0, "times/week")]
    assert extract_quantities("1-2 tablets BID") == [(1.0, "tablet"), (2.0, "tablet"), (2.0, "times/day")]
    assert extract_quantities("every 4 to 6 hours") == [(4.0, "h"), (6.0, "h")]
    # ordinary words are not quantities
    assert extract_quantities("Someone made a bid to help; see you in a bit.") == []


def test_same_quantity_converts_compatible_units_only():
    assert same_quantity((1.0, "g"), (1000.0, "mg"))
    assert same_quantity((500.0, "mcg"), (0.5, "mg"))
    assert same_quantity((2.0, "h"), (120.0, "min"))
    assert not same_quantity((5.0, "mg"), (50.0, "mg"))
    assert not same_quantity((5.0, "mg"), (5.0, "ml"))
    assert not same_quantity((5.0, "mg/kg"), (5.0, "mg"))


def test_negation_scope_direction_and_subordinate_clauses():
    # predicate cues reach back to the subject; prepositional cues only look forward
    assert is_negated("Antibiotics are usually not needed", ["antibiotic"])
    assert is_negated("Aspirin is contraindicated in children", ["aspirin"])
    assert not is_negated("Take ibuprofen without food", ["ibuprofen"])
    assert is_negated("Take ibuprofen without food", ["food"])
    # a cue inside an if-clause does not negate the main clause
    assert not is_negated("Seek emergency care if you can't breathe", ["seek", "emergency", "care"])
    # stems work as terms
    assert is_negated("Avoid giving antibiotics", ["antibiotic"])


def test_quantities_agree():
    five = extract_quantities("5 mg")
    assert quantities_agree(five, "Take 5mg at night.")
    assert quantities_agree(extract_quantities("1 g"), "Take 1000 mg.")
    assert not quantities_agree(five, "Take 50 mg at night.")
    # the text states a mass, and it is the wrong one: the bare "5" does not rescue it
    assert not quantities_agree(five, "Take 5 tablets of 50 mg.")
    # no mass stated at all: an unparsed notation with the same number is accepted
    assert quantities_agree(extract_quantities("2 cm"), 'Press at least 2" deep.')
    assert not quantities_agree(five, "Take it at night.")
    assert quantities_agree([], "anything")


def test_section_numbers_are_not_quantities():
    from m3.text.lexical import extract_quantities, quantities_agree

    # "1.1.1" (a guideline section) used to raise ValueError while scanning bare numbers
    five_mg = extract_quantities("take 5 mg")
    assert quantities_agree(five_mg, "NICE 1.1.1 says take 5 mg")
    assert not quantities_agree(five_mg, "NICE 1.1.1 says take 50 mg")
