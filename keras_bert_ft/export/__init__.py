"""Export: the raw-string SavedModel and the one reader that brings a run folder or an export back."""
