"""Clinical cases for the OSCE consultation environment (SPAR training, SCAN-bench-style evaluation).

    from m3.clinic.case_files import load_cases
    cases = load_cases("data/agentclinic_medqa.jsonl")   # 107 AgentClinic MedQA cases (MIT)
    case = cases[0]
    case.history          # inquiry checklist: HistoryFact(id, category, text, criticality 1|2)
    case.test_results     # TestResult(category from the 38-category catalogue, name, value, essential)
    case.diagnosis        # Diagnosis(text, icd10, icd10_title, match "exact"|"lexical"|"none")

Modules:
  cases         schema (ClinicalCase, HistoryFact, Finding, Demographics) and our record format
  agentclinic   AgentClinic MedQA/OSCE and NEJM records -> ClinicalCase (source-format parsers)
  case_files    load_cases / save_cases: JSONL of any supported format (file I/O)
  checklist     inquiry checklist derivation and the red-flag list (station 1: inquiry)
  catalogue     the 38 test categories (station 2: lab/exam)
  labs          test flattening, categorisation and essential/optional marking
  ranges        adult reference ranges for bare numeric results
  icd10         diagnosis -> WHO ICD-10 and the code-distance relation (station 3: diagnosis)
  transcript    the consultation transcript (stages, steps, loss masks)
  episode       the four-stage consultation (inquiry with the patient, DDX, lab, diagnosis)
  patient/      the passive patient simulator (config, questions, persona, retrieval, guards, llm)
  steps         the step verifier (SPAR's violation sets V_j) and gamma_j
  verifiers     the stage verifiers G_k (inquiry coverage, DDX, lab F1, ICD-10 diagnosis)
Comparison keys (case, accents, British spelling) come from `m3.text.normalize`.

Everything here is deterministic and model-free unless a caller opts into the MiniLM fallback of
`labs.categorize_test(..., semantic=True)`.
"""
