"""The orders example: an embedded order system the orders contract binds to."""
