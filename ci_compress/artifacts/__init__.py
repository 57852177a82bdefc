"""Model and data sources, safe loading, and the packed shipped format."""
