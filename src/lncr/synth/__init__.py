"""The phantom cohort: synthetic multi-stain renal biopsies with known ground truth."""
