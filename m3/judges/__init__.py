"""Judges: rubric grading (R_task, eq. 1; HealthBench grader) behind one interface, two backends."""
