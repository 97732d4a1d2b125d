"""The fixed catalogue of 38 test categories used by the OSCE lab station (SCAN-bench style).

    from m3.clinic.catalogue import CATALOGUE, CATEGORY_IDS, OTHER, category
    len(CATALOGUE)              # 38
    category("ct_chest").title  # 'CT chest'

SCAN-bench (docs/formulas.md, evaluation) asks the doctor for tests "from 38 categories" and scores the order
with a weighted F1; its list is not published. This one follows the usual hospital order sets (lab
panels, microbiology, physiology, imaging by modality and region, procedures), each category with the
synonyms that appear in AgentClinic test names.
`m3.clinic.labs.categorize_test` maps a test name onto it; anything else is `OTHER` ("other"),
which is not a category the station can ask for (vital signs, questionnaires, bedside manoeuvres).

Keyword semantics (see `labs.categorize_test`): a keyword is a phrase whose words must ALL occur in
one component of the test name ("Imaging / Chest_CT / Findings" has the components "imaging",
"chest ct", "findings"), in any order, after `textnorm.tokens` (lowercase, plurals folded). More
matched words beat fewer ("urine culture" beats "urine"), equal counts go to the earlier category
(so infectious_serology precedes autoantibodies: "Hepatitis A IgG Antibody" is an infection test).
`weak` keywords are generic words ("imaging", "ultrasound", "urine") that decide only when no
component has a normal keyword match.

Deliberate groupings (to stay at 38 categories, some scopes are wide):
  * cbc also holds the peripheral smear, reticulocytes, iron studies, LDH/haemolysis work-up and
    blood group (the haematology order set);
  * infectious_serology also holds microbiology of other specimens (stool, sputum, wound, throat,
    skin scrapings, Gram stains) and the tuberculin test;
  * csf covers all body-fluid analysis (CSF, synovial fluid, pleural and ascitic fluid);
  * biopsy also holds cytology, bone marrow, flow cytometry and immunofluorescence;
  * other_imaging holds every plain film except the chest, MRI/CT of other regions, other
    ultrasound, contrast studies, mammography and nuclear scans;
  * cardiac_markers includes creatine kinase (muscle), tumor_markers includes serum protein
    electrophoresis and inhibin.
On the 622 test results of the 107 AgentClinic MedQA cases, 24 map to "other": vital signs,
audiometry, Dix-Hallpike, questionnaires, sleep diary, autonomic and vestibular testing.
"""

from __future__ import annotations

from dataclasses import dataclass

OTHER = "other"


@dataclass(frozen=True)
class TestCategory:
    """One orderable category: `id` (stable key), `title` (shown to the doctor), `group`, keywords."""

    __test__ = False  # not a pytest class, despite the name

    id: str
    title: str
    group: str  # lab | microbiology | physiology | imaging | procedure
    keywords: tuple[str, ...]
    weak: tuple[str, ...] = ()


def _c(id_: str, title: str, group: str, keywords: str, weak: str = "") -> TestCategory:
    """Keywords are written '|'-separated so a phrase can hold spaces."""
    split = lambda s: tuple(k.strip() for k in s.split("|") if k.strip())  # noqa: E731
    return TestCategory(id_, title, group, split(keywords), split(weak))


CATALOGUE: tuple[TestCategory, ...] = (
    # --- laboratory: blood ----------------------------------------------------------------------
    _c(
        "cbc",
        "Complete blood count and haematology",
        "lab",
        "complete blood count|cbc|full blood count|fbc|blood count|hemogram|hematology|wbc|white blood cell"
        "|leukocyte|leukocyte count|total count wbc|hemoglobin|hb|hgb|hematocrit|hct|platelet|platelet count"
        "|rbc|red blood cell|mcv|neutrophil|lymphocyte|monocyte|eosinophil|basophil|band"
        "|differential count|peripheral smear|blood smear|peripheral blood smear|reticulocyte"
        "|reticulocyte count|iron|iron study|ferritin|tibc|total iron binding capacity|transferrin"
        "|iron saturation|vitamin b12|folate|haptoglobin|lactate dehydrogenase|ldh|direct antiglobulin"
        "|coombs|blood group|blood type|rh|eosinophilia|neutrophilia|neutropenia|lymphocytosis|lymphopenia"
        "|leukocytosis|leukopenia|thrombocytosis|thrombocytopenia|anemia|pancytopenia",
    ),
    _c(
        "bmp",
        "Basic metabolic panel / electrolytes",
        "lab",
        "basic metabolic panel|bmp|electrolyte|serum electrolyte|sodium|na|potassium|k|chloride|cl"
        "|bicarbonate|hco3|calcium|ca|ca2|total serum calcium|magnesium|mg|phosphate|phosphorus"
        "|comprehensive metabolic panel|cmp|osmolality",
    ),
    _c(
        "renal",
        "Renal function",
        "lab",
        "renal function|kidney function|creatinine|cr|urea|bun|urea nitrogen|blood urea nitrogen|egfr"
        "|gfr|cystatin|uric acid",
    ),
    _c(
        "lft",
        "Liver function tests",
        "lab",
        "liver function|lft|liver enzyme|liver panel|hepatic panel|ast|alt|sgot|sgpt|bilirubin"
        "|bilirubin total|bilirubin direct|alkaline phosphatase|alp|ggt|gamma glutamyl|albumin"
        "|total protein|ammonia|tp activity|prothrombin activity",
    ),
    _c(
        "coag",
        "Coagulation",
        "lab",
        "coagulation|coagulation profile|coagulation test|pt|aptt|ptt|inr|prothrombin time|thrombin time"
        "|partial thromboplastin time|fibrin split product|fibrin degradation product|fibrinogen|d dimer"
        "|bleeding time|act|activated clotting time|factor viii|factor ix"
        "|von willebrand|platelet function|platelet aggregation|mixing study",
    ),
    _c(
        "cardiac_markers",
        "Cardiac (and muscle) biomarkers",
        "lab",
        "troponin|ck mb|bnp|nt probnp|natriuretic peptide|cardiac enzyme|cardiac marker|creatine kinase"
        "|ck|cpk|myoglobin",
    ),
    _c(
        "lipids",
        "Lipid panel",
        "lab",
        "lipid|lipid panel|lipid profile|cholesterol|total cholesterol|triglyceride|ldl|hdl",
    ),
    _c(
        "thyroid",
        "Thyroid function",
        "lab",
        "thyroid function|thyroid function test|tft|tsh|thyroid stimulating hormone|free t4|ft4|t4|t3"
        "|free t3|thyroxine|thyroid antibody|tpo",
    ),
    _c(
        "glucose",
        "Glucose / HbA1c",
        "lab",
        "glucose|blood glucose|serum glucose|glu|blood sugar|hba1c|a1c|glycated hemoglobin"
        "|oral glucose tolerance|ogtt|c peptide|c peptide level|fasting glucose",
    ),
    _c(
        "abg",
        "Arterial blood gas",
        "lab",
        "arterial blood gas|abg|blood gases|blood gas|blood gas analysis|venous blood gas|ph|paco2|pao2"
        "|pco2|po2|base excess|lactate|oxygen saturation arterial",
    ),
    # --- laboratory: urine, cultures, immunology ----------------------------------------------
    _c(
        "urinalysis",
        "Urinalysis",
        "lab",
        "urinalysis|urine analysis|urine test|urine dipstick|urine microscopy|urine sediment|ua"
        "|urine osmolality|urine sodium|urine protein|proteinuria|24 hour urine|urine output",
        weak="urine|urinary",
    ),
    _c("urine_culture", "Urine culture", "microbiology", "urine culture|urinary culture|culture urine"),
    _c("blood_culture", "Blood culture", "microbiology", "blood culture|culture blood"),
    _c(
        "inflammatory",
        "Inflammatory markers",
        "lab",
        "inflammatory marker|esr|erythrocyte sedimentation rate|sedimentation rate|crp|c reactive protein"
        "|procalcitonin",
    ),
    _c(
        "infectious_serology",
        "Infectious disease serology / PCR / microbiology",
        "microbiology",
        "infectious disease|hiv|hiv viral load|viral load|hepatitis|hbsag|hbv|hcv|hsv|hpv|std|std panel"
        "|torch|torch screen|rubella|rubella igm|igm|igg"
        "|cmv|ebv|monospot|heterophile|pcr|antigen|cryptococcal antigen|toxoplasma|sti screen|gonorrhea"
        "|chlamydia|syphilis|rpr|vdrl|lyme|elisa for hiv|cd4|cd4 count|cd4 t lymphocyte|tuberculin"
        "|tuberculin skin test|quantiferon|interferon gamma release|throat culture|sputum culture"
        "|stool culture|wound culture|culture|gram stain|stool|stool test|stool examination"
        "|clostridium difficile|c difficile|ova and parasite|skin scraping|koh|fungal|malaria"
        "|blood film for malaria|influenza|covid|sars cov 2|rapid strep|strep|cryptococcus|histoplasmosis"
        "|histoplasma|coccidioides|blastomyces|aspergillus|mycobacterium|tb|acid fast|afb",
    ),
    _c(
        "autoantibodies",
        "Autoantibodies / immune serology",
        "lab",
        "autoantibody|antinuclear antibody|ana|anti nuclear antibody|antimitochondrial antibody|ama"
        "|anti dsdna|rheumatoid factor|rf|anti ccp|anca|acetylcholine receptor antibody"
        "|acetylcholine receptor|anti acetylcholine|desmoglein|anti tissue transglutaminase|ttg"
        "|complement|c3|c4|immunoglobulin|antibody|anti|serology|hla b27",
        weak="immune",
    ),
    _c(
        "tumor_markers",
        "Tumor markers",
        "lab",
        "tumor marker|ca 125|ca125|cea|afp|alpha fetoprotein|psa|ca 19 9|beta hcg tumor|inhibin"
        "|inhibin b|serum electrophoresis|protein electrophoresis|spep|immunofixation|free light chain"
        "|paraprotein|chromogranin",
    ),
    _c(
        "hormones",
        "Hormone tests",
        "lab",
        "hormone|hormonal profile|hormonal|fsh|lh|estradiol|estrogen|progesterone|testosterone"
        "|prolactin|cortisol|acth|aldosterone|renin|pth|parathyroid hormone|growth hormone|igf 1"
        "|insulin|hcg|beta hcg|pregnancy test|dheas|17 hydroxyprogesterone|catecholamine|metanephrine",
    ),
    _c(
        "toxicology",
        "Toxicology",
        "lab",
        "toxicology|toxicology screen|urine toxicology|drug screen|urine drug screen|tox screen"
        "|blood alcohol|blood alcohol level|alcohol level|ethanol|acetaminophen level|salicylate"
        "|drug level|amphetamine|cocaine|opiate|cannabinoid|benzodiazepine|carboxyhemoglobin"
        "|heavy metal|lead level",
    ),
    _c(
        "csf",
        "CSF and body-fluid analysis",
        "lab",
        "lumbar puncture|csf|cerebrospinal fluid|csf analysis|synovial fluid|arthrocentesis"
        "|joint aspiration|joint fluid|pleural fluid|thoracentesis|ascitic fluid|paracentesis",
    ),
    # --- physiology -----------------------------------------------------------------------------
    _c(
        "ecg",
        "ECG",
        "physiology",
        "ecg|ekg|electrocardiogram|electrocardiography|holter|cardiac monitor|telemetry",
    ),
    _c(
        "echo",
        "Echocardiography",
        "imaging",
        "echocardiogram|echocardiography|echo|tte|tee|transthoracic|transesophageal",
    ),
    _c(
        "pft",
        "Pulmonary function tests",
        "physiology",
        "pulmonary function|pulmonary function test|pft|spirometry|fev1|fvc|fev1 fvc|dlco|peak flow"
        "|lung function",
    ),
    _c(
        "emg_ncs",
        "EMG / nerve conduction",
        "physiology",
        "electromyography|emg|nerve conduction|nerve conduction study|ncs|repetitive nerve stimulation",
    ),
    _c("eeg", "EEG", "physiology", "eeg|electroencephalogram|electroencephalography"),
    # --- imaging --------------------------------------------------------------------------------
    _c(
        "cxr",
        "Chest X-ray",
        "imaging",
        "chest x ray|chest xray|chest radiograph|chest radiography|cxr|x ray chest|chest film",
    ),
    _c(
        "ct_head",
        "CT head",
        "imaging",
        "ct head|head ct|ct brain|brain ct|ct scan head|ct scan brain|cranial ct|ct cranial|head ct or mri",
    ),
    _c(
        "ct_chest",
        "CT chest",
        "imaging",
        "ct chest|chest ct|ct thorax|thorax ct|ct scan chest|ct scan thorax|ct pulmonary angiogram|ctpa"
        "|hrct|high resolution ct",
    ),
    _c(
        "ct_abdomen",
        "CT abdomen / pelvis",
        "imaging",
        "ct abdomen|abdominal ct|ct abdominal|ct pelvis|ct scan abdomen|ct abdomen pelvis|ct kub|ct urogram",
    ),
    _c(
        "mri_brain",
        "MRI brain",
        "imaging",
        "mri brain|brain mri|mri head|head mri|mri of the brain|cranial mri|mr brain",
    ),
    _c(
        "mri_spine",
        "MRI spine",
        "imaging",
        "mri spine|spine mri|mri lumbar|lumbar mri|mri cervical spine|mri thoracic spine|mri spinal"
        "|spinal mri|mri lumbar spine",
    ),
    _c(
        "us_abdomen",
        "Ultrasound abdomen / pelvis",
        "imaging",
        "abdominal ultrasound|ultrasound abdomen|ultrasound of the abdomen|pelvic ultrasound"
        "|ultrasound pelvis|transvaginal ultrasound|renal ultrasound|ultrasound kidney"
        "|obstetric ultrasound|ultrasound abdomen and pelvis|abdominal sonography|abdominal ultrasonography"
        "|pelvic ultrasonography|fast exam",
    ),
    _c(
        "doppler",
        "Doppler / vascular ultrasound",
        "imaging",
        "doppler|duplex|doppler ultrasound|vascular ultrasound|carotid ultrasound|ankle brachial index",
    ),
    # --- procedures -----------------------------------------------------------------------------
    _c(
        "endoscopy",
        "Endoscopy",
        "procedure",
        "endoscopy|egd|esophagogastroduodenoscopy|upper endoscopy|colonoscopy|sigmoidoscopy|anoscopy"
        "|proctoscopy|bronchoscopy|cystoscopy|laryngoscopy|ercp|capsule endoscopy",
    ),
    _c(
        "biopsy",
        "Biopsy / histopathology / cytology",
        "procedure",
        "biopsy|histopathology|histopathology finding|histology|pathology|cytology|fine needle aspiration"
        "|fna|bone marrow|bone marrow aspirate|bone marrow biopsy|flow cytometry|immunohistochemistry"
        "|immunofluorescence|direct immunofluorescence|frozen section",
    ),
    _c(
        "genetic",
        "Genetic testing",
        "lab",
        "genetic|genetic testing|genetic test|karyotype|chromosome analysis|mutation|gene|dna test"
        "|molecular testing|fish|microarray|sequencing",
    ),
    _c(
        "allergy",
        "Allergy testing",
        "lab",
        "allergy|allergy test|skin prick|prick test|patch test|ige|specific ige|rast",
    ),
    # --- everything else imaged -----------------------------------------------------------------
    _c(
        "other_imaging",
        "Other imaging",
        "imaging",
        "x ray|xray|radiograph|radiography|plain film|mammography|mammogram|barium|barium enema"
        "|barium swallow|intravenous pyelogram|ivp|pyelogram|bone scan|nuclear|pet|spect|scintigraphy"
        "|dexa|dxa|angiography|angiogram|fluoroscopy|cranial ultrasound|scrotal ultrasound|dermoscopy"
        "|fundoscopy|slit lamp",
        weak="imaging|image|ct|ct scan|mri|ultrasound|ultrasonography|sonography|scan|radiology",
    ),
)

CATEGORY_IDS: tuple[str, ...] = tuple(c.id for c in CATALOGUE)
_BY_ID = {c.id: c for c in CATALOGUE}

if len(CATALOGUE) != 38 or len(_BY_ID) != 38:  # the station's contract; fail at import, not mid-run
    raise RuntimeError(f"the catalogue must hold 38 distinct categories, has {len(_BY_ID)}")


def category(category_id: str) -> TestCategory:
    """The category with this id; raises ValueError naming the valid ids otherwise."""
    if category_id not in _BY_ID:
        raise ValueError(f"unknown test category {category_id!r}; valid ids: {', '.join(CATEGORY_IDS)}")
    return _BY_ID[category_id]
