"""Named training recipes (functions returning a config), installed as `minibridge.recipes`."""
