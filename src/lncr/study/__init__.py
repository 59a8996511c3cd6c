"""The study definition: settings, tables, validation and the patient-level split."""
