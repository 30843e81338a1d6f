"""Code of the UM-ProtoShare MONAI Label app (``main.py`` imports it; MONAI Label puts the app folder on sys.path)."""
