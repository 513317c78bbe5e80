"""autoprune's first-party criteria, strategies and scenarios (import name ``autoprune_plugins``).

They are registered through the ``autoprune`` entry-point group, exactly like a third-party plugin.
"""
