"""Library code behind the Python-backend models; each model.py in the repository is a thin adapter over one of these."""
