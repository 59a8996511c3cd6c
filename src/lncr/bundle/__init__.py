"""Portable model bundles: ``lncr export`` writes a study's final ensemble to one verified
file (:mod:`lncr.bundle.export`, :mod:`lncr.bundle.archive`); ``lncr apply`` scores new
patients with it (:mod:`lncr.bundle.apply`) and writes a one-page report per patient
(:mod:`lncr.bundle.patient_report`)."""
