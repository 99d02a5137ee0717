"""The web panel (``emberd panel``): server, library map and static page."""
