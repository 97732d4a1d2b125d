"""Text utilities shared by the judges, rewards, clinic and evaluations.

lexical     sentences, keywords, negation, quantities (rule-based, English)
normalize   comparison keys: case, accents, British spelling folded away
reasoning   the one rule that splits <think> reasoning from the answer
embeddings  all-MiniLM-L6-v2 sentence embeddings, offline, one model per process
"""
