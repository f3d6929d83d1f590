"""The npdg Streamlit dashboard (entry: ``app/main.py``). Pages live in ``pages/``."""
