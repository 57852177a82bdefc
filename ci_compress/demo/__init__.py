"""The built-in default: small models trained deterministically on scikit-learn's digits."""
