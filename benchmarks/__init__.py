"""``make bench``: ddim_lib against its peers (bare forward passes, diffusers), timed as ratios.

Every figure is a ratio of two things timed alternately in the same run (medians over repeats,
after a warm-up), so the load on a shared machine affects both sides alike. See README.md.
"""
