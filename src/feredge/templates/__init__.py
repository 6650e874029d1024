"""Files the Pi bundle and the service are made of, shipped in the wheel as package data.

The folders stay where the design card puts them (``bundle/`` and ``systemd/`` at the top of a
checkout); ``pyproject.toml`` maps them here, so one lookup (:func:`importlib.resources.files`)
finds them in a wheel install and in a source checkout alike.
"""
