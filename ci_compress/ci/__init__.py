"""CI providers: which one we run under, its metadata, and its report formats."""
