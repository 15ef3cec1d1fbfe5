"""Looking into a model and its data: Grad-CAM explanations (`diagnose.explanation`) and the audit
of a labelled image set (`diagnose.data_audit`: duplicates, leaks, likely label errors, outliers)."""
