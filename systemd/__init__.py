"""Package marker: the unit, sysusers file and example config ship in the wheel as ``feredge.templates.systemd``."""
