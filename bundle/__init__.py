"""Package marker: the Pi bundle's templates ship in the wheel as ``feredge.templates.bundle``."""
